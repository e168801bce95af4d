// The cluster's Service address ranges (kube-apiserver's --service-cluster-ip-range) as a set to test addresses against.
// Pure parsing; the set is Node's BlockList (C++), so a check per new connection costs little.
import { BlockList, isIP } from 'node:net';

/** Parses `a.b.c.d/n` or `v6/n` into a BlockList (Node's, in C++); throws naming the bad entry. */
export function parseServiceCidrs(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const c of cidrs) {
    const m = /^([^/]+)\/(\d{1,3})$/.exec(c);
    const family = m ? isIP(m[1] ?? '') : 0;
    const bits = Number(m?.[2]);
    if (!m || family === 0 || bits > (family === 4 ? 32 : 128)) throw new Error(`not a CIDR: ${JSON.stringify(c)} (want e.g. 10.96.0.0/12)`);
    list.addSubnet(m[1] as string, bits, family === 4 ? 'ipv4' : 'ipv6');
  }
  return list;
}

