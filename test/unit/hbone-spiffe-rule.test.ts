// One SPIFFE rule for both data paths: the shared table (test/interop/spiffe-cases.ts) against the Node path's check
// (checkClientSpiffe, i.e. parseSpiffeId plus the trust domain) and the native library's (ahb_spiffe_check, the C code
// that decides on 15008 under --data-path native). Needs the built library (npm run build).
import test from 'ava';
import { loadNativeLib } from '../../agent/src/hbone/native-lib.js';
import { checkClientSpiffe } from '../../agent/src/hbone/tls.js';
import { parseSpiffeId } from '../../agent/src/identity/spiffe.js';
import { CASES_TRUST_DOMAIN, SPIFFE_CASES } from '../interop/spiffe-cases.js';

const short = (uri: string): string => (uri.length > 80 ? `${uri.slice(0, 60)}…(${uri.length} bytes)` : uri);

test('the Node data path accepts exactly the table\'s identities', (t) => {
  for (const [uri, accepted, why] of SPIFFE_CASES) {
    const v = checkClientSpiffe(CASES_TRUST_DOMAIN, { subjectaltname: `URI:${uri}` });
    t.is(typeof v === 'string', accepted, `${short(uri)}: ${why} (${v instanceof Error ? v.message : v})`);
  }
});

test('the native data path accepts exactly the table\'s identities, with parseSpiffeId\'s reasons', (t) => {
  const lib = loadNativeLib();
  for (const [uri, accepted, why] of SPIFFE_CASES) {
    const bad = lib.spiffeCheck(uri, CASES_TRUST_DOMAIN);
    t.is(bad === undefined, accepted, `${short(uri)}: ${why} (${bad ?? 'accepted'})`);
    // Where the parser refuses, the C check names the same rule, in the parser's words.
    let parserReason: string | undefined;
    try {
      parseSpiffeId(uri);
    } catch (err) {
      parserReason = (err as Error).message;
    }
    if (parserReason !== undefined) t.true(bad !== undefined && parserReason.includes(bad), `${short(uri)}: parser "${parserReason.slice(-120)}", native "${bad}"`);
  }
  t.is(lib.spiffeCheck('spiffe://other.domain/ns/a/sa/b', ''), undefined, 'without a trust domain any valid ID passes');
  t.regex(lib.spiffeCheck('spiffe://other.domain/ns/a/sa/b', CASES_TRUST_DOMAIN) ?? '', /trust domain/);
});
