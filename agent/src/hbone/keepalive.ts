// Keepalive PINGs on an HTTP/2 session (either end): a peer that stops answering is dropped, freeing its streams.
// The timer is unref'd so an idle agent can still exit; it stops when the session closes.
import type { Http2Session } from 'node:http2';
import type { KeepaliveOptions } from './settings.js';

export function keepalive(session: Http2Session, opts: KeepaliveOptions, onDead: (err: Error) => void): void {
  let outstanding: NodeJS.Timeout | undefined;
  const timer = setInterval(() => {
    if (session.closed || session.destroyed || outstanding) return;
    outstanding = setTimeout(() => {
      onDead(Object.assign(new Error(`HBONE peer did not answer a PING within ${opts.timeoutMs} ms`), { code: 'AMB_ERR_KEEPALIVE' }));
      session.destroy();
    }, opts.timeoutMs);
    outstanding.unref();
    const sent = session.ping((err) => {
      if (err) return;
      clearTimeout(outstanding);
      outstanding = undefined;
    });
    if (!sent) {
      clearTimeout(outstanding);
      outstanding = undefined;
    }
  }, opts.intervalMs);
  timer.unref();
  session.once('close', () => {
    clearInterval(timer);
    clearTimeout(outstanding);
  });
}
