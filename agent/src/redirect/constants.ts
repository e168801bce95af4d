// Ports, marks and addresses of the in-pod data path, shared by every redirection backend and the forwarder.
// They follow Istio ambient's conventions so operators recognise them.

export const OUTBOUND_PORT = 15001;
export const INBOUND_PLAINTEXT_PORT = 15006;
export const INBOUND_HBONE_PORT = 15008;
/** Ports that neither inbound path may forward to (a request for them would loop into the agent). */
export const AGENT_PORTS: readonly number[] = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT];
/** SO_MARK on every socket the agent opens inside a pod; the rules let it through untouched. */
export const AGENT_MARK = 0x539;
export const AGENT_MARK_MASK = 0xfff;
/** Source address that node-local (kubelet) connections to enrolled pods are SNATed to. */
export const PROBE_SNAT_IP = '169.254.7.127';
/** The same for IPv6 (Istio's address; RFC 5952 form, as ip6tables-save and nft print it). */
export const PROBE_SNAT_IP6 = 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff';
/**
 * Inbound source preservation (the agent's upstream socket to the app is bound to the client's address): connections
 * the agent opens to its own pod get this connection mark (Istio's 0x111/0xfff), restored on the app's reply packets so
 * that policy routing (`fwmark REPLY_MARK lookup LOCAL_ROUTE_TABLE`) delivers them back to the agent, not out of the pod.
 */
export const REPLY_MARK = 0x111;
export const REPLY_MARK_MASK = 0xfff;
/** Routing table holding `local default dev lo` inside the pod (shared with the ebpf backend's outbound re-injection). */
export const LOCAL_ROUTE_TABLE = 100;
/** Preference of the `fwmark REPLY_MARK lookup LOCAL_ROUTE_TABLE` rule (Istio's 32764: before `main` at 32766). */
export const REPLY_RULE_PREF = 32764;
