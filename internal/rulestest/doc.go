// Package rulestest plays rules on a user without storing anything: it
// builds a profile (a starting profile, then a history of events),
// applies one event with the rules' Step, lists the actions it fires and
// the journey steps it schedules, decides on each channel with the
// explain trace, and fires the pending timers at their wake times to show
// what they would do if no other event arrived.
//
// It is the core shared by `nudgectl rules test` (cmd/nudgectl) and the
// AdminService.TestRules RPC (server/playground.go), so that the command
// line and the web console's rules playground answer alike. It owns no
// I/O and reads no clock: the caller passes the rules, the events, the
// starting profile and the processing time, and prints or converts the
// Report as it likes.
//
// Concurrency: Run is safe for concurrent use (the rules are immutable
// and Run works on its own copy of the starting profile, which it never
// modifies).
package rulestest
