package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"buf.build/go/protovalidate"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/rulestest"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// profileFile is the --profile input: a user's event history, in the
// API's JSON form of nudge.v1.Event, from which the profile is built.
type profileFile struct {
	Events []json.RawMessage `json:"events"`
}

// testReport is what rules test prints with --json.
type testReport struct {
	Event   string           `json:"event"`
	Status  string           `json:"status"`
	Reason  string           `json:"reason,omitempty"`
	Actions []profile.Action `json:"actions"`
	// Notes say what became of the trigger actions and journey steps the
	// event reached (profile.Note); Timers are the steps pending once it
	// is applied, and Later what they do at their due times if no other
	// event arrives.
	Notes     []profile.Note              `json:"notes,omitempty"`
	Timers    []timerReport               `json:"timers,omitempty"`
	Later     []rulestest.Firing          `json:"later,omitempty"`
	Decisions []rulestest.ChannelDecision `json:"decisions"`
}

// timerReport is a pending journey step or deferred action (profile.Timer).
type timerReport struct {
	Trigger  string    `json:"trigger"`
	Step     int       `json:"step"`
	Due      time.Time `json:"due"`
	Wake     time.Time `json:"wake"`
	Deferred bool      `json:"deferred,omitempty"`
}

// rulesTestOptions are the flags of nudgectl rules test.
type rulesTestOptions struct {
	profilePath string
	eventPath   string
	channels    string
	now         string
	asJSON      bool
}

func newRulesTestCmd(stdout, stderr io.Writer) *cobra.Command {
	var o rulesTestOptions
	cmd := &cobra.Command{
		Use:   "test FILE --event E.json",
		Short: "Show what the rules fire, schedule and decide for an event",
		Long: `Applies the event (after the history in P.json, {"events": [...]}, both
in nudge.v1.Event JSON) to a profile with the rules of FILE, and shows the
triggers that fire, the journey steps it schedules and what each does at
its due time if no other event arrives, and the decision on each channel
with its trace. No server is needed.`,
		Example: "  nudgectl rules test examples/rules.yaml --event e.json --profile p.json --channels sms",
		Args:    oneArg("rules FILE"),
		RunE: func(_ *cobra.Command, args []string) error {
			if o.eventPath == "" {
				return errEmptyFlag("event")
			}
			return exitWith(rulesTest(args[0], o, stdout, stderr))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.profilePath, "profile", "", `JSON file {"events": [...]} with the user's history (nudge.v1.Event JSON); empty: a new user`)
	fs.StringVar(&o.eventPath, "event", "", "JSON file with the event to apply (nudge.v1.Event JSON; required)")
	fs.StringVar(&o.channels, "channels", "", "comma-separated channels to decide for (default: every channel the rules name)")
	fs.StringVar(&o.now, "now", "", "processing time, RFC 3339 (default: the event's occurred_at)")
	fs.BoolVar(&o.asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("event") // the flag exists
	return cmd
}

// rulesTest shows what a rules file does with one event on a profile: the
// actions it would fire, the timers it would schedule and what each would
// do at its due time, and the decision on each channel. The playing is
// internal/rulestest's, shared with AdminService.TestRules (the web
// console's rules playground); the printing is this command's.
func rulesTest(rulesPath string, o rulesTestOptions, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, "nudgectl rules test:", err)
		return 1
	}
	rules, err := decision.Load(rulesPath)
	if err != nil {
		for _, p := range problems(err) {
			fmt.Fprintln(stderr, p.Message)
		}
		return 1
	}
	ev, err := readEvent(o.eventPath)
	if err != nil {
		return fail(err)
	}
	now := ev.OccurredAt
	if o.now != "" {
		if now, err = time.Parse(time.RFC3339, o.now); err != nil {
			return fail(fmt.Errorf("--now: %w", err))
		}
	}
	var history []profile.Event
	if o.profilePath != "" {
		if history, err = readHistory(o.profilePath, ev.UserID); err != nil {
			return fail(err)
		}
	}

	var chs []string
	if o.channels != "" {
		chs = strings.Split(o.channels, ",")
	}
	res, err := rulestest.Run(rules, rulestest.Input{UserID: ev.UserID, History: history, Event: &ev, Channels: chs, Now: now})
	if err != nil {
		return fail(err)
	}
	rep := testReport{Event: ev.ID, Status: res.Event.Status.String(), Reason: res.Event.Reason, Actions: res.Actions,
		Notes: res.Notes, Later: res.Later, Decisions: res.Decisions}
	for _, t := range res.Timers {
		rep.Timers = append(rep.Timers, timerReport{Trigger: t.Trigger, Step: t.Step, Due: t.Due, Wake: t.Wake, Deferred: t.Deferred})
	}
	if o.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fail(err)
		}
		return 0
	}
	printReport(stdout, rep)
	return 0
}

func printReport(w io.Writer, rep testReport) {
	fmt.Fprintf(w, "event %s: %s", rep.Event, rep.Status)
	if rep.Reason != "" {
		fmt.Fprintf(w, " (%s)", rep.Reason)
	}
	fmt.Fprintln(w)
	if len(rep.Actions) == 0 {
		fmt.Fprintln(w, "  no trigger fires")
	}
	for _, a := range rep.Actions {
		printAction(w, "  ", a)
	}
	for _, n := range rep.Notes {
		if n.Kind != profile.NoteScheduled { // the timers below say it
			printNote(w, "  ", n)
		}
	}
	for _, t := range rep.Timers {
		fmt.Fprintf(w, "  timer %s step %d: due %s", t.Trigger, t.Step, stamp(t.Due))
		if t.Deferred {
			fmt.Fprintf(w, ", deferred by quiet hours until %s", stamp(t.Wake))
		}
		fmt.Fprintln(w)
	}
	if len(rep.Later) > 0 {
		fmt.Fprintln(w, "  if no other event arrives:")
	}
	for _, f := range rep.Later {
		prefix := "    at " + stamp(f.At) + ": "
		for _, a := range f.Actions {
			printAction(w, prefix, a)
		}
		for _, n := range f.Notes {
			printNote(w, prefix, n)
		}
	}
	for _, cd := range rep.Decisions {
		d := cd.Decision
		fmt.Fprintf(w, "decision on %s: %s", cd.Channel, strings.ToUpper(d.Verdict.String()))
		if d.Offer != nil {
			fmt.Fprintf(w, " %s", d.Offer.ID)
		}
		if !d.NotBefore.IsZero() {
			fmt.Fprintf(w, " not before %s", d.NotBefore.Format(time.RFC3339))
		}
		if d.Control {
			fmt.Fprint(w, " (control group)")
		}
		fmt.Fprintln(w)
		for _, r := range d.Reasons {
			fmt.Fprintf(w, "  reason [%s] %s\n", r.RuleID, r.Message)
		}
		for _, s := range d.Trace {
			mark := "x"
			if s.Passed {
				mark = "ok"
			}
			fmt.Fprintf(w, "    %-2s %s: %s = %s\n", mark, s.RuleID, s.Subject, s.Value)
		}
	}
}

func printAction(w io.Writer, prefix string, a profile.Action) {
	fmt.Fprintf(w, "%sfires %s: %s via %s, template %s, payload %v", prefix, a.ID, a.TriggerID, a.Channel, a.Template, a.Payload)
	if !a.DueAt.IsZero() {
		fmt.Fprintf(w, ", due %s", stamp(a.DueAt))
	}
	fmt.Fprintln(w)
}

// printNote prints what became of a trigger action or journey step,
// but for a firing, which its action's line shows.
func printNote(w io.Writer, prefix string, n profile.Note) {
	switch n.Kind {
	case profile.NoteFired:
	case profile.NoteScheduled:
		fmt.Fprintf(w, "%sschedules %s, due %s\n", prefix, n.Trigger, stamp(n.Due))
	case profile.NoteCancelled:
		fmt.Fprintf(w, "%scancels %s\n", prefix, n.Trigger)
	case profile.NoteDeferred:
		fmt.Fprintf(w, "%sdefers %s to the end of the quiet hours\n", prefix, n.Trigger)
	case profile.NoteDropped:
		fmt.Fprintf(w, "%sdrops %s: %s\n", prefix, n.Trigger, n.Reason)
	default:
		fmt.Fprintf(w, "%s%s %s\n", prefix, n.Kind, n.Trigger)
	}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// readEvent reads and validates one event as the server would.
func readEvent(path string) (profile.Event, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return profile.Event{}, err
	}
	return parseEvent(path, data)
}

func parseEvent(name string, data []byte) (profile.Event, error) {
	var e nudgev1.Event
	if err := protojson.Unmarshal(data, &e); err != nil {
		return profile.Event{}, fmt.Errorf("%s: %w", name, err)
	}
	if err := protovalidate.Validate(&e); err != nil {
		return profile.Event{}, fmt.Errorf("%s: %w", name, err)
	}
	return server.EventFromProto(&e), nil
}

// readHistory reads a --profile file; every event must be the user's.
func readHistory(path, userID string) ([]profile.Event, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f profileFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	events := make([]profile.Event, 0, len(f.Events))
	for i, raw := range f.Events {
		e, err := parseEvent(fmt.Sprintf("%s: events[%d]", path, i), raw)
		if err != nil {
			return nil, err
		}
		if e.UserID != userID {
			return nil, fmt.Errorf("%s: events[%d] is for user %q, the event for %q", path, i, e.UserID, userID)
		}
		events = append(events, e)
	}
	return events, nil
}
