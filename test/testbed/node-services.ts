// The kernel and process side of Services on a node: kube-proxy's base setup and iptables-restore inside the node netns,
// and the node's dnsmasq (started through the testbed's ProcessTracker, so teardown stops it by PID).
import { createWriteStream, type WriteStream } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { DNSMASQ, dnsmasqArgs, type DnsmasqOptions } from './cluster-dns.js';
import { kubeProxyJumps } from './kube-proxy.js';
import { ipIn } from './netns.js';
import { NODE_UPLINK } from './node.js';
import type { ProcessTracker } from './processes.js';

/** The Service CIDR ClusterIPs are allocated from. */
export const SERVICE_CIDR = '10.96.0.0/16';

/**
 * What a node needs before kube-proxy's rules work: bridged pod traffic through iptables (so a same-node endpoint's reply
 * is un-DNATed), a route for the Service CIDR (a real node has a default route; without one an un-DNATed ClusterIP
 * packet dies in routing before the filter REJECT sees it, and the node itself could not connect), the jumps and base chains.
 */
export async function setupNodeServices(netns: string): Promise<void> {
  await execa('ip', ['netns', 'exec', netns, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=1']);
  await ipIn(netns, 'route', 'add', SERVICE_CIDR, 'dev', NODE_UPLINK);
  await applyIptables(netns, kubeProxyJumps());
}

/** `iptables-restore --noflush` of `text` inside the node netns (one transaction per table). */
export async function applyIptables(netns: string, text: string): Promise<void> {
  const r = await execa('ip', ['netns', 'exec', netns, 'iptables-restore', '--noflush', '-w', '5'], { input: text, reject: false });
  if (r.exitCode !== 0) throw new Error(`iptables-restore in ${netns} failed: ${String(r.stderr).trim()}\n--- input ---\n${text}`);
}

/** One node's dnsmasq: started in the node netns, its stderr kept in a log file and watched for hosts-file reads. */
export class DnsServer {
  readonly netns: string;
  readonly logFile: string;
  readonly #opts: DnsmasqOptions;
  readonly #hostsFile: string;
  #reads = 0;
  #log: WriteStream | undefined;
  #tail = '';
  #exited: string | undefined;

  /** `hostsFile` is the one file of `opts.hostsDir` the testbed writes; its reads are counted. */
  constructor(netns: string, opts: DnsmasqOptions, hostsFile: string, logFile: string) {
    this.netns = netns;
    this.#opts = opts;
    this.#hostsFile = hostsFile;
    this.logFile = logFile;
  }

  /** How many times dnsmasq has (re)read the hosts file so far. */
  get reads(): number {
    return this.#reads;
  }

  /** Start it and wait for its first read of the hosts file (which must exist). */
  async start(tracker: ProcessTracker, timeoutMs = 5000): Promise<void> {
    this.#log = createWriteStream(this.logFile, { flags: 'a' });
    // A log that cannot be written (run dir gone) must not be an uncaught 'error': it is noted in the tail shown on failures.
    this.#log.on('error', (err) => {
      this.#tail = `${this.#tail}\n[dnsmasq log ${this.logFile}: ${err.message}]`.slice(-2000);
    });
    const sub = tracker.runInNetns(this.netns, DNSMASQ, dnsmasqArgs(this.#opts), { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', buffer: false }, true);
    let pending = '';
    sub.stderr?.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      this.#log?.write(text);
      this.#tail = (this.#tail + text).slice(-2000);
      pending += text;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line.includes(`read ${this.#hostsFile} `)) this.#reads++;
    });
    void sub.then(
      (r) => this.#onExit(`exit code ${r.exitCode}`),
      (err: unknown) => this.#onExit(err instanceof Error ? err.message.split('\n')[0] ?? 'failed' : 'failed'),
    );
    await this.waitForReads(1, timeoutMs);
  }

  /** Wait until dnsmasq has read the hosts file at least `count` times in all. */
  async waitForReads(count: number, timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.#reads < count) {
      if (this.#exited !== undefined) throw new Error(`dnsmasq in ${this.netns} ended (${this.#exited}):\n${this.#tail}`);
      if (Date.now() > deadline) throw new Error(`dnsmasq in ${this.netns} did not read ${this.#hostsFile} within ${timeoutMs} ms:\n${this.#tail}`);
      await sleep(5);
    }
  }

  #onExit(how: string): void {
    this.#exited = how;
    this.#log?.end();
    this.#log = undefined;
  }
}
