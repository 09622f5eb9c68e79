package module

// Actions recorded in an Event.
const (
	ActionLoad     = "load"
	ActionRollback = "rollback"
)

// Results recorded in an Event.
const (
	ResultPending = "pending" // about to switch; an audit error refuses it
	ResultOK      = "ok"
	ResultRefused = "refused"
)

// Event describes one change to a module, for the audit log.
type Event struct {
	Action      string
	Module      string
	FromVersion string
	FromDigest  string
	ToVersion   string
	ToDigest    string
	Result      string
	Err         error
}
