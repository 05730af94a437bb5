// Command nudgectl is nudge's command-line tool.
//
//	nudgectl rules check [--json] FILE...
//	    Validates rules files offline with the server's own compiler. Exit
//	    status 1 when a file has errors, each printed as
//	    FILE:LINE: trigger|offer "ID": FIELD: problem.
//	nudgectl rules test FILE --event E.json [--profile P.json] [--channels sms,push] [--now T] [--json]
//	    Applies the event (after the history in P.json, {"events": [...]},
//	    both in nudge.v1.Event JSON) to a profile with the rules, and shows
//	    the triggers that fire and the decision on each channel with its
//	    trace: for rule authors, no server needed.
//	nudgectl decisions tail [--redis-addr A] [--all] [-n N] [--json]
//	    Follows the decision audit stream (nudged --audit-sample).
//	nudgectl send [FILE.jsonl|-] [--allow-rejects]
//	    Replays events through the client's Publisher with progress and a
//	    summary; exit status 1 on rejected events or malformed lines
//	    (reported with their line number) unless --allow-rejects. Sending
//	    a file again is safe: event ids make it exactly once in effect.
//	nudgectl decide USER --channel C, nudgectl profile get|delete USER
//	    Call nudged (--addr) and print the answer (--json for JSON).
//	nudgectl actions tail --group G [--ack]
//	    Subscribes to the actions as a member of group G; with --ack it
//	    consumes them.
//	nudgectl actions dead
//	    Lists the dead-letter stream (actions delivered too many times).
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  nudgectl rules check [--json] FILE...   validate rules files offline
  nudgectl rules test FILE --event E.json [--profile P.json] [--channels C,...] [--now T] [--json]
                                          what the rules fire and decide for an event
  nudgectl decisions tail [--redis-addr ADDR] [--all] [-n N] [--json]
                                          follow the decision audit stream
  nudgectl send [FILE.jsonl|-] [--addr A] [--allow-rejects] [--json]
                                          replay events (one nudge.v1.Event JSON a line)
  nudgectl decide USER --channel C [--explain] [--addr A] [--json]
  nudgectl profile get|delete USER [--addr A] [--json]
  nudgectl actions tail --group G [--channels C,...] [--ack] [-n N] [--addr A] [--json]
  nudgectl actions dead [--redis-addr ADDR] [-n N] [--json]
`

// run executes one command line and returns the exit status: 0 success,
// 1 the command's check failed, 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) >= 2 && args[0] == "rules" && args[1] == "check":
		return rulesCheck(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "rules" && args[1] == "test":
		return rulesTest(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "decisions" && args[1] == "tail":
		return decisionsTail(args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "send":
		return send(args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "decide":
		return decide(args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "profile":
		return profileCmd(args[1:], stdout, stderr)
	case len(args) >= 2 && args[0] == "actions" && args[1] == "tail":
		return actionsTail(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "actions" && args[1] == "dead":
		return actionsDead(args[2:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return 2
}
