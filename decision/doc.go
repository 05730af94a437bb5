// Package decision owns nudge's rules: it loads and validates the rules
// file, compiles its CEL expressions once, evaluates triggers on applied
// events (Rules.Step, the profile.Step a store runs in its transactions),
// schedules and fires journey steps (trigger.go: wait, unless, then; the
// timers live in the profile, Rules.FireStep fires the due ones), puts
// trigger actions under the channel limit, frequency caps and quiet
// hours, and picks offers under the policies for decisions
// (Rules.Decide), ranked by priority and then by their score.
//
// A rules file's features (features.go) are named numbers computed from
// a profile by CEL expressions over profile and now: Rules.EvalFeatures
// serves them to models (GetFeatures, feature exports), and offers read
// them as features.<name>, evaluated at most once per decision.
//
// Every answer a decider gets is built here (answer.go): Rules.Answer
// turns a profile read into the decision, the channel's degraded fallback
// when the read failed (Rules.Fallback), or the stale answer when the
// profile is older than the caller wrote; Rules.Reserve is the step of a
// decision taken with reserve (replayed for the same idempotency key,
// holding a frequency-cap slot); Rules.ReserveFailed is its degraded
// answer. Each answer carries the rules' version, stamped once.
//
// The rules file — its keys, durations, policies, the order in which a
// decision is made, the CEL variables and every profile function, with
// examples — is documented for rule authors in one place, docs/rules.md
// at the root of the repository. Every example there is executed by this
// package's tests (docs_test.go); examples/rules.yaml is the commented
// example bundled into nudged.
//
// Parse reports every problem of a file at once, each as a *RuleError
// naming the file, line, rule and field, joined with errors.Join; every
// one matches ErrInvalidRules. A file is held to Limits (limits.go): its
// size (Load reads no more than the limit), its YAML nodes with aliases
// expanded, its rules, its expressions, and the cost of one event or one
// decision from CEL's static estimate of every expression (cost.go), so
// that no file can exhaust memory, stall a load, or slow every event. An expression that fails at evaluation time
// never panics and never fails a batch or a decision: the trigger does not
// fire (the error goes to the OnEvalError hook) or the offer is skipped
// with the error in its reason.
//
// # Purity and concurrency
//
// The package is pure: no Redis, no gRPC, no clock reads (callers pass
// now; time zones come from the embedded tzdata, not the host). A compiled
// *Rules is immutable and safe for concurrent use: Decide, Fallback,
// Step and EvalFeatures may be called from any number of goroutines.
// Decide and EvalFeatures only read the profile they are given. The step function returned by Step modifies the
// profile it is given, so it may run concurrently only on distinct
// profiles. Live holds the rules in force, swaps them atomically on
// reload, remembers the last file it refused (Refused: when, why), and is
// safe for concurrent use; a decision or step keeps the *Rules it started
// with. A reload reads and compiles under a lock of its own, which the
// readers of the rules in force never take.
package decision
