// Package fleet moves a group of service instances from one set of module
// versions (and, optionally, one binary version) to another through etcd:
// the desired state of each group lives
// in etcd, every instance runs an Agent that applies what it is told and
// writes back what it applied under its lease, and a leader-elected
// Controller moves the group through waves, halting and reverting the
// first wave that goes bad.
//
// The key layout (see docs/fleet.md), under Options.Prefix (default
// DefaultPrefix) and a group name:
//
//	<prefix>/<group>/desired            Desired: the spec an operator asked for, its waves, the writer
//	<prefix>/<group>/control            Control: pause, resume or abort of the running rollout
//	<prefix>/<group>/rollout            Rollout: the controller's state machine (wave, members, why it halted)
//	<prefix>/<group>/stable             Spec: what every instance without a target runs
//	<prefix>/<group>/target/<instance>  Spec: what this instance runs while a rollout moves it
//	<prefix>/<group>/applied/<instance> Applied: what it runs and how the last change went, under its lease
//	<prefix>/<group>/leader/...         the controllers' election
//
// Only the operator's commands (Set, Pause, Resume, Abort) write desired
// and control; only the elected controller writes rollout, stable and
// target (each write checks it still leads); only an instance writes its
// applied key. An instance applies target/<instance> when it exists, else
// stable.
//
// An agent never applies an artifact it cannot verify: it fetches the
// payload and its manifest by URL, checks the payload's digest against the
// pin in etcd, and hands both to the service, whose trust path (signature,
// policy, name, kind, self-test) decides. A refusal is written to its
// applied state with the failed check; what served keeps serving. The
// agent reaches the service through a Service: the host in its own
// process (HostService, an embedded agent) or the service's control socket
// (SocketService, a sidecar: hotswap fleet agent).
//
// A spec that pins a binary is applied binary first: the agent upgrades
// the service, and the new process's agent (embedded) or the same sidecar
// acks the binary once the upgrade committed and then applies the
// modules; see docs/fleet.md.
package fleet
