// Re-adoption's shortcut (redirect/rules-seen.ts), on both netfilter backends in throwaway namespaces of the test's own:
// the nf_tables generation as the kernel counts it, and an install that finds the pod's rules proved exact runs no tool.
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { Netns } from '../../agent/src/platform/netns.js';
import { readNfGeneration, type NfGeneration } from '../../agent/src/platform/nf-generation.js';
import { createBackend, type RedirectBackend } from '../../agent/src/redirect/backend.js';
import type { RedirectMode } from '../../agent/src/config.js';
import { netnsTest } from '../testbed/ava.js';
import { scratchNetns, type ScratchNetns } from './scratch-netns.js';
import { NFT } from './helpers.js';

const POD_IP = '10.5.0.1';
const CTX = { ifname: 'amb-rs0', ips: [POD_IP] };

/** A fresh namespace (lo up, a veth with the pod's address), gone after the test (scratchNetns). */
function bed(t: ExecutionContext): Promise<ScratchNetns> {
  return scratchNetns(t, 'amb-rs', async (run) => {
    await run('ip', 'link', 'add', CTX.ifname, 'type', 'veth', 'peer', 'name', 'amb-rs1');
    await run('ip', 'link', 'set', CTX.ifname, 'up');
    await run('ip', 'addr', 'add', `${POD_IP}/24`, 'dev', CTX.ifname);
  });
}

/**
 * The same namespace handle with a tool path that names nothing: every tool the backend would start in the pod fails,
 * while what the agent does itself (the generation, rtnetlink, sysctls: through the descriptor) works.
 */
function withoutTools(ns: Netns): Netns {
  return new Proxy(ns, { get: (target, prop) => (prop === 'toolPath' ? '/nonexistent/amb-rs-netns' : Reflect.get(target, prop)) });
}

/** The namespace's generation; throws where the kernel does not tell it (this machine's does). */
function genOf(ns: Netns): NfGeneration {
  const g = readNfGeneration(ns);
  if (!g) throw new Error(`no nf_tables generation for ${ns.path}`);
  return g;
}

async function backendOf(mode: RedirectMode, preserveSource: boolean): Promise<RedirectBackend> {
  const b = await createBackend(mode, { preserveSource });
  await b.prepare();
  return b;
}

netnsTest.serial('the nf_tables generation: reads leave it, each committed table moves it by one, and each namespace has its own cookie', async (t) => {
  const a = await bed(t);
  const b = await bed(t);
  const g0 = genOf(a.ns);
  t.is(g0.gen, 1, 'nothing committed in a new namespace yet');
  t.not(g0.netnsCookie, genOf(b.ns).netnsCookie, 'two namespaces, two cookies');
  t.regex(g0.netnsCookie, /^[0-9a-f-]{36}\/\d+$/, 'the boot id, then the cookie');
  await a.run('iptables-save');
  await a.run(NFT, 'list', 'ruleset');
  t.deepEqual(genOf(a.ns), g0, 'reading the rules commits nothing');
  await execa('ip', ['netns', 'exec', a.name, 'iptables-restore', '--noflush'], {
    input: '*nat\n:AMB-RS - [0:0]\nCOMMIT\n*mangle\n:AMB-RS - [0:0]\nCOMMIT\n',
  });
  t.is(genOf(a.ns).gen, g0.gen + 2, 'an iptables-nft restore of two tables: two transactions');
  await t.throwsAsync(a.run('iptables', '-t', 'nat', '-D', 'AMB-RS', '-j', 'RETURN'));
  t.is(genOf(a.ns).gen, g0.gen + 2, 'a refused change commits nothing');
});

for (const mode of ['iptables', 'nftables'] as const) {
  for (const preserveSource of [false, true]) {
    const tag = `[${mode}${preserveSource ? ', source preservation' : ''}]`;
    netnsTest.serial(`${tag} an install proves the rules it wrote; a later install finding them untouched runs no tool; any commit since means a full read-back`, async (t) => {
      const { ns, run } = await bed(t);
      const backend = await backendOf(mode, preserveSource);
      const seen = await backend.installPod(ns, CTX, { fresh: true });
      if (!seen) return t.fail('a fresh install on nf_tables is proved');
      t.is(seen.gen, genOf(ns).gen);
      const drift = await backend.verifyPod(ns, CTX);
      t.true(drift.ok, JSON.stringify(drift));
      t.deepEqual(drift.seen, seen, 'the read-back proves the same rules at the same generation');

      // Untouched: nothing is read or written (the tools cannot even start).
      t.deepEqual(await backend.installPod(withoutTools(ns), CTX, { seen }), seen);
      t.is(genOf(ns).gen, seen.gen, 'nothing committed');
      // The same record with anything off (another generation, another namespace, another digest, malformed) is no proof.
      for (const bad of [{ ...seen, gen: seen.gen + 1 }, { ...seen, netnsCookie: '1' }, { ...seen, digest: 'x' }, { gen: String(seen.gen) }]) {
        await t.throwsAsync(backend.installPod(withoutTools(ns), CTX, { seen: bad as typeof seen }), undefined, `not a proof: ${JSON.stringify(bad)}`);
      }

      // A commit of someone else's (the pod's own filter rule): a full read-back, which finds our rules intact.
      await run(NFT, 'add', 'table', 'ip', 'amb-rs-own');
      const after = await backend.installPod(ns, CTX, { seen });
      if (!after) return t.fail('re-proved');
      t.not(after.gen, seen.gen);
      t.is(after.digest, seen.digest, 'the same rules');
      t.true((await backend.verifyPod(ns, CTX)).ok);

      // A change to ours: put back, and proved again.
      if (mode === 'iptables') await run('iptables', '-t', 'nat', '-F', 'AMBIENT_OUTPUT');
      else await run(NFT, 'flush', 'chain', 'inet', 'ambient-nat', 'output');
      t.false((await backend.verifyPod(ns, CTX)).ok, 'drifted');
      const repaired = await backend.installPod(ns, CTX, { seen: after });
      t.true((await backend.verifyPod(ns, CTX)).ok, 'repaired');
      t.is(repaired?.digest, seen.digest);
      t.is(repaired?.gen, genOf(ns).gen);
    });
  }

  netnsTest.serial(`[${mode}] no proof where the install cannot know what it left: a fresh guess in a namespace something was committed in, a jump of someone else's into our chains`, async (t) => {
    const { ns, run } = await bed(t);
    const backend = await backendOf(mode, true);
    await run(NFT, 'add', 'table', 'ip', 'amb-rs-own');
    const fresh = await backend.installPod(ns, CTX, { fresh: true });
    // nftables replaces its tables whole, whatever was there: what it wrote is what is there.
    if (mode === 'nftables') {
      t.is(fresh?.gen, genOf(ns).gen);
      return;
    }
    t.is(fresh, undefined, 'a fresh guess may be wrong once anything was committed: not proved');
    const proved = await backend.installPod(ns, CTX, {});
    t.is(proved?.gen, genOf(ns).gen, 'read, found exact, proved');
    // A jump into our chain that is not ours: restoreInput leaves it, verify calls it unexpected.
    await run('iptables', '-t', 'nat', '-I', 'PREROUTING', '-i', CTX.ifname, '-j', 'AMBIENT_PRERT');
    t.is(await backend.installPod(ns, CTX, { seen: proved }), undefined, 'not proved: the table is not as verify wants it');
    const drift = await backend.verifyPod(ns, CTX);
    t.deepEqual(drift.unexpected, [`-A PREROUTING -i ${CTX.ifname} -j AMBIENT_PRERT`]);
    t.is(drift.seen, undefined);
  });

  netnsTest.serial(`[${mode}] rules proved with the reply-mark sysctls on are not trusted once one is off: the install adds the per-packet restore`, async (t) => {
    const { ns, run } = await bed(t);
    const backend = await backendOf(mode, true);
    const seen = await backend.installPod(ns, CTX, { fresh: true }); // a fresh pod gets the sysctls on, and no restore
    if (!seen) return t.fail('proved');
    await run('sysctl', '-qw', 'net.ipv4.tcp_fwmark_accept=0');
    await t.throwsAsync(backend.installPod(withoutTools(ns), CTX, { seen }), undefined, 'no shortcut: the restore is wanted now');
    const now = await backend.installPod(ns, CTX, { seen });
    t.not(now?.digest, seen.digest, 'proved with the restore');
    t.is(await run('sysctl', '-n', 'net.ipv4.tcp_fwmark_accept'), '1', 'and the sysctl back on after the pieces');
    // Kept from now on, whatever the sysctls say (app sockets accepted meanwhile rely on it): still a shortcut.
    t.deepEqual(await backend.installPod(withoutTools(ns), CTX, { seen: now }), now);
    t.true((await backend.verifyPod(ns, CTX)).ok);
  });

  netnsTest.serial(`[${mode}] rules proved under other flags (source preservation turned on across a restart) are rewritten, not trusted`, async (t) => {
    const { ns } = await bed(t);
    const seen = await (await backendOf(mode, false)).installPod(ns, CTX, { fresh: true });
    if (!seen) return t.fail('proved');
    const now = await backendOf(mode, true);
    t.false((await now.verifyPod(ns, CTX)).ok, 'the preservation pieces are missing');
    await t.throwsAsync(now.installPod(withoutTools(ns), CTX, { seen }), undefined, 'no shortcut: another digest');
    const rewritten = await now.installPod(ns, CTX, { seen });
    t.not(rewritten?.digest, seen.digest);
    t.true((await now.verifyPod(ns, CTX)).ok);
  });
}
