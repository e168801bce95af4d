// 1. CNI ADD latency: the bridge-only chain against bridge + ambient-cni (per backend, and as a Node-only plugin), on
// single-node testbeds; sequential and concurrent ADDs, empty VERSION execs, enrolment times from the agent's log.
import { runChild } from '../../agent/src/platform/exec.js';
import type { AgentProcess, PluginInvocation, PodSpec, RedirectMode, Testbed, TestbedOptions, TestbedPod } from '../../test/testbed/index.js';
import { jsonLines, num } from './json.js';
import { AMBIENT, checkInterrupted, progress, withTestbeds } from './run.js';
import { type Dist, dist } from './stats.js';

/** The options this measurement reads. */
export interface AddOpts {
  modes: RedirectMode[];
  pods: number;
  warmup: number;
  concurrency: number;
}

export interface AddSample {
  pod: string;
  /** Whole chain (every plugin, as the runtime ran them). */
  chainMs: number;
  bridgeMs: number;
  /** The ambient-cni exec, including its wait for the agent's verdict. */
  ambientMs: number | undefined;
  /** ambient-cni's own log: 'asking agent to enroll pod' -> 'agent verdict' (ms-resolution timestamps). */
  agentRoundTripMs: number | undefined;
  /** The agent's 'pod enrolled' log record: rules + listeners + probe target. */
  enrolMs: number | undefined;
}

export interface ChainResult {
  key: string;
  label: string;
  mode: RedirectMode | undefined;
  sequential: AddSample[];
  concurrent: AddSample[];
  /** Wall time of the whole concurrent batch. */
  concurrentWallMs: number | undefined;
  /** VERSION execs of each plugin of the chain (the price of starting the executable at all), and NODE_BARE. */
  versionMs: Record<string, number[]>;
  /** Whole-chain DEL of every pod at the end, 4 at a time (raw results only). */
  delMs: number[];
}

/** Key in versionMs: `node -e 0` in the node netns. */
export const NODE_BARE = 'node -e 0';

function pluginInvocation(invs: PluginInvocation[], plugin: string): PluginInvocation | undefined {
  return invs.find((i) => i.command === 'ADD' && i.plugin === plugin);
}

function sampleOf(pod: TestbedPod): AddSample {
  const invs = pod.addOutcome.invocations;
  const amb = pluginInvocation(invs, 'ambient-cni');
  let rtt: number | undefined;
  if (amb !== undefined) {
    const recs = jsonLines(amb.stderr);
    const asked = num(recs.find((r) => r.msg === 'asking agent to enroll pod')?.time);
    const answered = num(recs.find((r) => r.msg === 'agent verdict')?.time);
    if (asked !== undefined && answered !== undefined) rtt = answered - asked;
  }
  return {
    pod: pod.key,
    chainMs: pod.addOutcome.durationMs,
    bridgeMs: pluginInvocation(invs, 'bridge')?.durationMs ?? Number.NaN,
    ambientMs: amb?.durationMs,
    agentRoundTripMs: rtt,
    enrolMs: undefined,
  };
}

async function attachEnrolTimes(agent: AgentProcess, samples: AddSample[]): Promise<void> {
  const byPod = new Map<string, number>();
  for (const r of await agent.logs()) {
    const ms = num(r.ms);
    if (r.msg === 'pod enrolled' && typeof r.pod === 'string' && ms !== undefined) byPod.set(r.pod, ms);
  }
  for (const s of samples) s.enrolMs = byPod.get(s.pod);
}

/** One node, the conflist with bridge + host-local only, no agent: the baseline chain. */
export const BRIDGE_ONLY_TESTBED: TestbedOptions = { nodes: 1, withAmbientCni: false, agent: false };

/** One node, bridge + host-local + ambient-cni (native front), its agent on `mode`. */
export function ambientTestbed(mode: RedirectMode, extra: Partial<TestbedOptions> = {}): TestbedOptions {
  return { nodes: 1, redirectMode: mode, agentLogLevel: 'info', ...extra };
}

/**
 * Whole-chain DEL of `pods`, `concurrency` at a time, like kubelet (each pod's netns deleted after its DEL). A failed
 * DEL is counted (not timed) and retried once, forced, like kubelet's retry: so the chain's later plugins (host-local)
 * still release the pod's address. Returns the successful DELs' durations and the failures' messages.
 */
export async function deletePodsBatched(tb: Testbed, pods: TestbedPod[], concurrency: number): Promise<{ ms: number[]; failures: string[] }> {
  const queue = [...pods];
  const ms: number[] = [];
  const failures: string[] = [];
  const worker = async (): Promise<void> => {
    for (let pod = queue.shift(); pod !== undefined; pod = queue.shift()) {
      checkInterrupted();
      try {
        ms.push((await tb.deletePod(pod)).durationMs);
      } catch (err) {
        failures.push(`${pod.key}: ${err instanceof Error ? err.message : String(err)}`);
        try {
          if (tb.pods.includes(pod)) await tb.deletePod(pod, { force: true });
        } catch (err2) {
          failures.push(`${pod.key} (retried, forced): ${err2 instanceof Error ? err2.message : String(err2)}`);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return { ms, failures };
}

export async function benchAdd(o: AddOpts): Promise<ChainResult[]> {
  const chains: { key: string; label: string; mode: RedirectMode | undefined; tb: TestbedOptions }[] = [
    { key: 'bridge', label: 'bridge alone (baseline)', mode: undefined, tb: BRIDGE_ONLY_TESTBED },
    ...o.modes.map((m) => ({
      key: `ambient-${m}`,
      label: `bridge + ambient-cni, agent ${m}`,
      mode: m,
      tb: ambientTestbed(m),
    })),
    // The same plugin code without the native fast path: every ADD starts Node (what a Node-only plugin costs).
    {
      key: `node-plugin-${o.modes[0] ?? 'iptables'}`,
      label: `bridge + ambient-cni as a Node process only, agent ${o.modes[0] ?? 'iptables'}`,
      mode: o.modes[0] ?? 'iptables',
      tb: { nodes: 1, redirectMode: o.modes[0] ?? 'iptables', agentLogLevel: 'info', cniPlugin: 'node' },
    },
    // The standalone executable (Node SEA) alone: the front's fallback on a node, and what a host without Node runs.
    {
      key: `standalone-${o.modes[0] ?? 'iptables'}`,
      label: `bridge + ambient-cni as the standalone executable only, agent ${o.modes[0] ?? 'iptables'}`,
      mode: o.modes[0] ?? 'iptables',
      tb: { nodes: 1, redirectMode: o.modes[0] ?? 'iptables', agentLogLevel: 'info', cniPlugin: 'standalone' },
    },
  ];
  progress(`ADD latency: ${chains.length} single-node testbeds (${chains.map((c) => c.key).join(', ')})`);
  return withTestbeds(
    chains.map((c) => c.tb),
    async (tbs) => {
      const results: ChainResult[] = chains.map((c) => ({
        key: c.key,
        label: c.label,
        mode: c.mode,
        sequential: [],
        concurrent: [],
        concurrentWallMs: undefined,
        versionMs: {},
        delMs: [],
      }));
      for (const tb of tbs) await tb.setNamespace('bench', AMBIENT);

      // Warm-up (page cache, first exec of each binary), then the measured sequential ADDs. Chains are interleaved
      // pod by pod so that whatever else the machine does at a given moment hits every chain alike.
      for (let w = 0; w < o.warmup; w++) {
        for (const tb of tbs) {
          checkInterrupted();
          await tb.addPod({ node: 0, namespace: 'bench', name: `warm${w}` });
        }
      }
      for (let i = 0; i < o.pods; i++) {
        for (const [j, tb] of tbs.entries()) {
          checkInterrupted();
          const pod = await tb.addPod({ node: 0, namespace: 'bench', name: `s${i}` });
          results[j]?.sequential.push(sampleOf(pod));
        }
        if ((i + 1) % 10 === 0) progress(`  sequential ADDs: ${i + 1}/${o.pods} per chain`);
      }

      if (o.concurrency > 0) {
        for (const [j, tb] of tbs.entries()) {
          checkInterrupted();
          const specs: PodSpec[] = Array.from({ length: o.pods }, (_, i) => ({ node: 0, namespace: 'bench', name: `c${i}` }));
          const t0 = performance.now();
          const pods = await tb.addPods(specs, { concurrency: o.concurrency });
          const r = results[j];
          if (r === undefined) continue;
          r.concurrentWallMs = performance.now() - t0;
          r.concurrent = pods.map(sampleOf);
          progress(`  ${o.concurrency} concurrent ADDs x ${o.pods} pods on ${r.key}: ${(r.concurrentWallMs / 1000).toFixed(1)} s`);
        }
      }

      // What one exec of each plugin costs with no work to do (node start-up for ambient-cni).
      for (const [j, tb] of tbs.entries()) {
        const node = tb.node(0);
        const r = results[j];
        if (r === undefined) continue;
        for (const plugin of node.conflist.plugins) {
          const times: number[] = [];
          for (let k = 0; k < 10; k++) {
            checkInterrupted();
            times.push((await node.cni.version(plugin)).invocation.durationMs);
          }
          r.versionMs[plugin.type] = times;
        }
        if (node.conflist.plugins.some((p) => p.type === 'ambient-cni')) {
          // The floor under any Node.js plugin: the runtime starting and exiting, started the same way as the plugins
          // (the testbed's runtime: posix_spawn in the node's namespace).
          const bare: number[] = [];
          for (let k = 0; k < 10; k++) {
            checkInterrupted();
            const t0 = performance.now();
            const r = await runChild(process.execPath, [process.execPath, '-e', '0'], process.env, { netns: node.netnsPath });
            if (r.exit.code !== 0) throw new Error(`node -e 0 in ${node.netnsPath} failed: ${r.stderr || `exit ${r.exit.code}`}`);
            bare.push(performance.now() - t0);
          }
          r.versionMs[NODE_BARE] = bare;
        }
        if (node.agent !== undefined) await attachEnrolTimes(node.agent, [...r.sequential, ...r.concurrent]);
      }

      // Delete the pods a few at a time: destroy() would DEL all of them at once (a hundred plugin processes per
      // testbed on 2 cores). The DEL times go to the raw results only.
      progress(`  deleting ${tbs.reduce((n, tb) => n + tb.pods.length, 0)} pods`);
      for (const [j, tb] of tbs.entries()) {
        const r = results[j];
        r?.delMs.push(...(await deletePodsBatched(tb, tb.pods, 4)).ms);
      }
      return results;
    },
  );
}

/** Distributions of each timing of a set of ADD samples (a timing a sample lacks is left out, not counted as 0). */
export function addStats(samples: AddSample[]): Record<'chain' | 'bridge' | 'ambient' | 'agentRoundTrip' | 'enrol', Dist> {
  return {
    chain: dist(samples.map((s) => s.chainMs)),
    bridge: dist(samples.map((s) => s.bridgeMs)),
    ambient: dist(samples.flatMap((s) => (s.ambientMs === undefined ? [] : [s.ambientMs]))),
    agentRoundTrip: dist(samples.flatMap((s) => (s.agentRoundTripMs === undefined ? [] : [s.agentRoundTripMs]))),
    enrol: dist(samples.flatMap((s) => (s.enrolMs === undefined ? [] : [s.enrolMs]))),
  };
}
