// Packet capture on the link between simulated nodes (tshark on the fabric bridge), for tests that must see the wire.
// Starts before the traffic, stops on demand, and answers questions about what crossed: ports, TLS hellos, raw bytes.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Testbed } from '../testbed/index.js';
import { formatHostPort } from '../../agent/src/protocol/address.js';

export interface Capture {
  /** Stops tshark and returns what it saw. */
  stop(): Promise<CaptureResult>;
}

export interface CaptureResult {
  file: string;
  /** Every TCP port pair "src>dst" seen, deduplicated. */
  flows: Set<string>;
  /** Server ports of all TCP segments carrying payload. */
  payloadPorts: Set<number>;
  /**
   * The TCP flows that carried payload, either way, as `client>server:port` named by their server end (the lower port):
   * `10.244.0.5>10.244.1.6:15008`, `fd00:10:244::5>[fd00:10:244:1::6]:15008`. The client's port is left out.
   */
  payloadFlows: Set<string>;
  /** TLS ClientHellos: their SNI (empty when none) and offered versions. */
  clientHellos: { sni: string; versions: string }[];
  raw: Buffer;
}

/**
 * Resolves once tshark captures into `file`. "Capturing on" can come a moment before dumpcap reads packets: wait for it
 * to have written the file's header, then a little more, so the first handshake of the test is not missed.
 */
async function capturing(proc: { stderr?: NodeJS.ReadableStream | null }, file: string, iface: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tshark did not start capturing on ${iface} within 15 s`)), 15_000);
    proc.stderr?.on('data', (d: Buffer) => {
      if (String(d).includes('Capturing on')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  for (let i = 0; i < 50 && !(await stat(file).then((st) => st.size > 0, () => false)); i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 250));
}

/** Captures TCP on the fabric bridge (all inter-node traffic) into the testbed's run dir. */
export async function captureFabric(tb: Testbed, name: string): Promise<Capture> {
  const file = join(tb.runDir, `${name}.pcapng`);
  const proc = tb.fabricSpawn('tshark', ['-i', 'br0', '-f', 'tcp', '-w', file, '-q'], { reject: false, stderr: 'pipe' });
  await capturing(proc, file, 'br0');
  return {
    async stop(): Promise<CaptureResult> {
      await new Promise((r) => setTimeout(r, 500)); // let the last packets reach the file
      proc.kill('SIGINT');
      await proc;
      const fields = await execa('tshark', ['-r', file, '-T', 'fields', '-E', 'occurrence=f',
        '-e', 'tcp.srcport', '-e', 'tcp.dstport', '-e', 'tcp.len', '-e', 'ip.src', '-e', 'ip.dst', '-e', 'ipv6.src', '-e', 'ipv6.dst']);
      const flows = new Set<string>();
      const payloadPorts = new Set<number>();
      const payloadFlows = new Set<string>();
      for (const line of fields.stdout.split('\n')) {
        const [sps, dps, lens, ip4src, ip4dst, ip6src, ip6dst] = line.split('\t');
        const [sp, dp] = [Number(sps), Number(dps)];
        if (sps === undefined || dps === undefined || Number.isNaN(sp)) continue;
        flows.add(`${sp}>${dp}`);
        if (Number(lens ?? 0) <= 0) continue;
        payloadPorts.add(Math.min(sp, dp));
        const [src, dst] = ip6src ? [ip6src, ip6dst ?? ''] : [ip4src ?? '', ip4dst ?? ''];
        const [client, server, port] = sp < dp ? [dst, src, sp] : [src, dst, dp];
        payloadFlows.add(`${client}>${formatHostPort(server, port)}`);
      }
      const hellos = await execa('tshark', ['-r', file, '-Y', 'tls.handshake.type == 1', '-T', 'fields',
        '-e', 'tls.handshake.extensions_server_name', '-e', 'tls.handshake.extensions.supported_version']);
      const clientHellos = hellos.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => {
        const [sni, versions] = l.split('\t');
        return { sni: sni ?? '', versions: versions ?? '' };
      });
      return { file, flows, payloadPorts, payloadFlows, clientHellos, raw: await readFile(file) };
    },
  };
}

/** A raw capture of one interface (every frame, any protocol), for tests that search the bytes themselves. */
export interface RawCapture {
  /** Stops tshark and returns the pcapng file's bytes. */
  stop(): Promise<{ file: string; raw: Buffer; frames: number }>;
}

/**
 * Captures every frame on `iface` inside node `node`'s netns (e.g. a pod's host-side veth) into the testbed's run dir,
 * with no capture filter: what the kernel put on that link, whatever the protocol.
 */
export async function captureNodeLink(tb: Testbed, node: number, iface: string, name: string): Promise<RawCapture> {
  const file = join(tb.runDir, `${name}.pcapng`);
  const proc = tb.nodeSpawn(node, 'tshark', ['-i', iface, '-w', file, '-q'], { reject: false, stderr: 'pipe' });
  await capturing(proc, file, iface);
  return {
    async stop() {
      await new Promise((r) => setTimeout(r, 500));
      proc.kill('SIGINT');
      await proc;
      const count = await execa('tshark', ['-r', file, '-T', 'fields', '-e', 'frame.number'], { reject: false });
      return { file, raw: await readFile(file), frames: String(count.stdout).split('\n').filter((l) => l.trim() !== '').length };
    },
  };
}

/** How many times `needle` occurs in `haystack` (raw bytes, non-overlapping). */
export function countOccurrences(haystack: Buffer, needle: Buffer): number {
  let n = 0;
  for (let at = haystack.indexOf(needle); at >= 0; at = haystack.indexOf(needle, at + needle.length)) n++;
  return n;
}
