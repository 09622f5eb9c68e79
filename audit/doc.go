// Package audit keeps hotswap's audit log: an append-only file of JSON
// lines, one per event (time, actor, action, target, from/to digest, result,
// error), each fsync'd before Record returns.
//
// The log is the record of every change to the code a service runs, and of
// every refusal. A change that cannot be recorded must not happen, so Record
// returns an error whenever the event may not be on disk, and callers refuse
// the change on that error:
//
//	ev := audit.Event{Actor: "cli", Action: audit.ActionSwap, Target: "pricing",
//		From: old.String(), To: next.String(), Result: audit.ResultOK}
//	if err := log.Record(ctx, ev); err != nil {
//		return fmt.Errorf("swap pricing: audit: %w", err) // the old version keeps serving
//	}
//	// switch to next
//
// The live file is rotated when it would grow past Options.MaxSize, keeping
// Options.Keep older files (path.1 is the newest). Read returns events
// newest first across all of them, filtered by target or action.
package audit
