// Package canary decides whether a new version of a module may take over
// from the stable one, inside the process, from exact per-version numbers.
//
// A canary is a prepared version serving a share of the module's calls
// beside the stable version (see module.Canary: the split is sticky per
// routing key and widens monotonically). A Rollout drives it through the
// steps of a Policy, e.g. 1%, 5%, 25%, 50%, then promotion:
//
//   - every tick it samples both versions' counters and updates three
//     sequential tests of the canary against the stable version over the
//     same calls: failures (relative, with an absolute floor), and calls
//     slower than the stable median and 99th percentile (relative, with an
//     absolute floor). It aborts as soon as one of them has the evidence,
//     once each version served Policy.MinCalls calls in the step;
//   - at the end of each window (Policy.Interval) the step passes if each
//     version served MinCalls calls and every user check passed: the next
//     step starts at a higher weight, or the canary is promoted after the
//     last. Without enough calls the step holds, never passes, and after
//     Policy.MaxEmptyWindows such windows in a row the canary is aborted;
//   - operators may pause (no advance, automatic abort still on), freeze
//     (no automatic decision at all), resume, promote or abort at any time.
//
// The false-abort rate of a canary as good as the stable version is at most
// Policy.FalseAbortRate whatever the traffic; docs/canary.md explains the
// tests and the defaults.
//
// Every verdict goes to Options.Record before it takes effect; package host
// writes them to the audit log and refuses to widen a canary it could not
// record.
package canary
