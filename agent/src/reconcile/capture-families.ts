// Which address families a redirect backend captures, and what enrolment does with a pod's addresses of each: the one
// place that refuses a pod the backend cannot capture at all, and names the addresses whose TCP is refused, not carried.
import { familiesOf, ipFamily, type IpFamily } from '../protocol/address.js';

/** What the check reads of a backend: its name and the families it declares (RedirectBackend.captureFamilies). */
export interface CaptureCapability { readonly name: string; readonly captureFamilies: readonly IpFamily[] }

export type FamilyVerdict =
  /** `uncaptured`: the pod's addresses in families the backend does not capture (their TCP is refused in the pod). */
  | { ok: true; uncaptured: string[] }
  | { ok: false; reason: string };

/**
 * Pure: may a pod with these addresses be enrolled by a backend capturing `families`? Yes when it has an address in a
 * captured family (its other addresses are listed as uncaptured), or no address at all (nothing to decide by). No when
 * every address is in a family the backend cannot capture: the pod would start with all its TCP refused, so it is
 * refused at enrolment with the reason (fail closed: it never starts outside the mesh either).
 */
export function checkCaptureFamilies(ips: readonly string[], backend: CaptureCapability): FamilyVerdict {
  const families = backend.captureFamilies;
  const uncaptured = ips.filter((ip) => {
    const f = ipFamily(ip);
    return f !== undefined && !families.includes(f);
  });
  const present = familiesOf(ips);
  if (present.length > 0 && !present.some((f) => families.includes(f))) {
    return {
      ok: false,
      reason: `the pod's addresses (${ips.join(', ')}) are ${present.map(label).join(' and ')} only and the ${backend.name} backend captures ${families.map(label).join(' and ') || 'nothing'} only; ${present.map(label).join(' and ')} capture is not available with it yet`,
    };
  }
  return { ok: true, uncaptured };
}

const label = (f: IpFamily): string => (f === 'ipv4' ? 'IPv4' : 'IPv6');
