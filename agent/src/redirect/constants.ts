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
