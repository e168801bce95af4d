// One SPIFFE rule, two implementations: the shared table (test/interop/spiffe-cases.ts) against the TypeScript side
// (spiffeRuleBroken, i.e. parseSpiffeId plus the trust domain) and the relay's (ahb_spiffe_check, the C code in
// agent/native/hbone-relay/tls.c that decides on 15008). Needs the built library (npm run build).
import test from 'ava';
import { loadNativeLib } from '../../agent/src/hbone/native-lib.js';
import { spiffeRuleBroken } from '../../agent/src/hbone/tls.js';
import { parseSpiffeId } from '../../agent/src/identity/spiffe.js';
import { CASES_TRUST_DOMAIN, SPIFFE_CASES } from '../interop/spiffe-cases.js';

const short = (uri: string): string => (uri.length > 80 ? `${uri.slice(0, 60)}…(${uri.length} bytes)` : uri);

test('the TypeScript parser\'s check accepts exactly the table\'s identities', (t) => {
  for (const [uri, accepted, why] of SPIFFE_CASES) {
    const bad = spiffeRuleBroken(uri, CASES_TRUST_DOMAIN);
    t.is(bad === undefined, accepted, `${short(uri)}: ${why} (${bad ?? 'accepted'})`);
  }
});

test('the relay\'s native check accepts exactly the table\'s identities, with parseSpiffeId\'s reasons', (t) => {
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
