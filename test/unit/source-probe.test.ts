// The start-up probe of --preserve-source (and of its IPv6 half, with --capture-ipv6, the default): passes with the agent's
// capabilities, and without CAP_NET_ADMIN/CAP_NET_RAW fails with AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE naming the
// capability, the option of each family and the switch. Binds only; no traffic.
import test from 'ava';
import { execa } from 'execa';
import { SourcePreservationUnavailableError } from '../../agent/src/platform/source-probe.js';
import { REPO_ROOT } from '../testbed/repo.js';

const asRoot = process.getuid?.() === 0 ? test : test.skip;

/** Runs the probe in a fresh node process (optionally under setpriv), printing "ok" or "<code> <message>". */
async function probe(prefix: string[], ipv6 = false): Promise<string> {
  const script = `import('./agent/src/platform/source-probe.ts').then(async (m) => { try { await m.probeSourcePreservation({ ipv6: ${ipv6} }); console.log('ok'); } catch (e) { console.log(e.code + ' ' + e.message); } })`;
  const [cmd = 'node', ...args] = [...prefix, process.execPath, '--import=tsx', '-e', script];
  const r = await execa(cmd, args, { cwd: REPO_ROOT, timeout: 30_000 });
  return r.stdout.trim();
}

asRoot('the probe passes with the agent\'s capabilities, IPv6 half included', async (t) => {
  t.is(await probe([]), 'ok');
  t.is(await probe([], true), 'ok');
});

asRoot('without CAP_NET_ADMIN and CAP_NET_RAW the probe fails clearly, naming what is missing and the switch', async (t) => {
  const out = await probe(['setpriv', '--inh-caps=-net_admin,-net_raw', '--bounding-set=-net_admin,-net_raw', '--']);
  t.regex(out, /^AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE --preserve-source cannot work here: setting IP_TRANSPARENT was refused \(EPERM\): the agent needs CAP_NET_ADMIN/);
  t.regex(out, /--preserve-source=false/);
});

asRoot('with --capture-ipv6 the probe also names what IPv6 lacks (IPV6_TRANSPARENT)', async (t) => {
  const out = await probe(['setpriv', '--inh-caps=-net_admin,-net_raw', '--bounding-set=-net_admin,-net_raw', '--'], true);
  t.regex(out, /^AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE --preserve-source cannot work here: setting IP_TRANSPARENT was refused \(EPERM\)/);
  t.regex(out, /; setting IPV6_TRANSPARENT was refused \(EPERM\): the agent needs CAP_NET_ADMIN/);
});

test('when only the IPv6 half is missing, the error names --capture-ipv6=false as a way out too', (t) => {
  const v6 = new SourcePreservationUnavailableError(['IPV6_TRANSPARENT is not supported'], { ipv6Only: true });
  t.regex(v6.message, /--preserve-source=false .*, or with --capture-ipv6=false/);
  const both = new SourcePreservationUnavailableError(['IP_TRANSPARENT is not supported', 'IPV6_TRANSPARENT is not supported'], { ipv6Only: false });
  t.notRegex(both.message, /--capture-ipv6/, 'IPv4 missing too: turning IPv6 off would not help');
});
