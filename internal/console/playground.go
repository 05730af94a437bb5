package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// maxPlaygroundForm bounds a playground post: the rules (1 MiB at most,
// as TestRules takes them), the event and the history.
const maxPlaygroundForm = 4 << 20

// playgroundData is the playground's form and, once run, its result.
type playgroundData struct {
	Rules, Event, History, UserID, Channels, Now string
	Err                                          string // the form's input was wrong: what to fix
	Ran                                          bool
	Result                                       *nudgev1.TestRulesResponse
	Decisions                                    []decisionView
}

// playground shows the form and, on a POST, runs it with AdminService's
// TestRules: the same code as nudgectl rules test, and nothing written.
func (c *Console) playground(w http.ResponseWriter, r *http.Request, s *session) {
	d := playgroundData{}
	if r.Method != http.MethodPost {
		if r.FormValue("load") == "rules" {
			// A copy of the rules in force to edit.
			ctx, cancel := c.rpc(r, s)
			defer cancel()
			res, err := c.admin.GetRules(ctx, &nudgev1.GetRulesRequest{IncludeContent: true})
			if err != nil {
				_, d.Err = rpcFailure("reading the rules in force failed", err)
			}
			d.Rules = res.GetContent()
		}
		c.render(w, r, s, "playground", "Rules playground", 0, d)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxPlaygroundForm)
	d.Rules, d.Event, d.History = r.PostFormValue("rules"), r.PostFormValue("event"), r.PostFormValue("history")
	d.UserID, d.Channels, d.Now = strings.TrimSpace(r.PostFormValue("user_id")), r.PostFormValue("channels"), strings.TrimSpace(r.PostFormValue("now"))
	req, err := d.request()
	if err != nil {
		d.Err = err.Error()
		c.render(w, r, s, "playground", "Rules playground", http.StatusBadRequest, d)
		return
	}
	ctx, cancel := c.rpc(r, s)
	defer cancel()
	res, err := c.admin.TestRules(ctx, req)
	if err != nil {
		code, msg := rpcFailure("running the rules failed", err)
		d.Err = msg
		c.render(w, r, s, "playground", "Rules playground", code, d)
		return
	}
	d.Ran, d.Result = true, res
	for _, cd := range res.GetDecisions() {
		d.Decisions = append(d.Decisions, decisionView{Channel: cd.GetChannel(), Open: true, Decision: cd.GetDecision()})
	}
	c.render(w, r, s, "playground", "Rules playground", 0, d)
}

// request builds TestRules' request from the form, with a message naming
// the field when one does not parse.
func (d *playgroundData) request() (*nudgev1.TestRulesRequest, error) {
	req := &nudgev1.TestRulesRequest{Rules: d.Rules, UserId: d.UserID}
	if strings.TrimSpace(d.Event) != "" {
		req.Event = &nudgev1.Event{}
		if err := protojson.Unmarshal([]byte(d.Event), req.Event); err != nil {
			return nil, fmt.Errorf("Event: not an event in the API's JSON (nudge.v1.Event): %v", err)
		}
	}
	if h := strings.TrimSpace(d.History); h != "" {
		events, err := parseHistory(h)
		if err != nil {
			return nil, fmt.Errorf("History: %w", err)
		}
		req.History = events
	}
	for _, ch := range strings.FieldsFunc(d.Channels, func(r rune) bool { return r == ',' || r == ' ' }) {
		if !slices.Contains(req.Channels, ch) {
			req.Channels = append(req.Channels, ch)
		}
	}
	if d.Now != "" {
		t, err := time.Parse(time.RFC3339, d.Now)
		if err != nil {
			return nil, fmt.Errorf("Now: %q is not an RFC 3339 time (2026-12-07T12:00:00Z)", d.Now)
		}
		req.Now = timestamppb.New(t)
	}
	return req, nil
}

// parseHistory reads a history as nudgectl rules test --profile does
// ({"events": [...]}), or a bare JSON array of events.
func parseHistory(text string) ([]*nudgev1.Event, error) {
	var raw []json.RawMessage
	if strings.HasPrefix(text, "[") {
		if err := json.Unmarshal([]byte(text), &raw); err != nil {
			return nil, fmt.Errorf("not a JSON array of events: %v", err)
		}
	} else {
		var f struct {
			Events []json.RawMessage `json:"events"`
		}
		if err := json.Unmarshal([]byte(text), &f); err != nil {
			return nil, fmt.Errorf(`not {"events": [...]} nor a JSON array of events: %v`, err)
		}
		raw = f.Events
	}
	events := make([]*nudgev1.Event, len(raw))
	for i, m := range raw {
		events[i] = &nudgev1.Event{}
		if err := protojson.Unmarshal(m, events[i]); err != nil {
			return nil, fmt.Errorf("event %d: %v", i+1, err)
		}
	}
	return events, nil
}

// decide asks what each channel would decide for the user now, with the
// rules in force and the stored profile, and reads the user's pending
// journey steps: TestRules, so nothing is written.
func (c *Console) decide(ctx context.Context, d *userData) {
	res, err := c.admin.TestRules(ctx, &nudgev1.TestRulesRequest{UserId: d.ID})
	if err != nil {
		_, d.DecideErr = rpcFailure("deciding failed", err)
		return
	}
	for _, cd := range res.GetDecisions() {
		d.Decisions = append(d.Decisions, decisionView{Channel: cd.GetChannel(), Open: cd.GetChannel() == d.Channel, Decision: cd.GetDecision()})
	}
	for _, tm := range res.GetTimers() {
		d.Timers = append(d.Timers, timerRow{Trigger: tm.GetTriggerId(), Step: int(tm.GetStep()), Due: tm.GetDue().AsTime(), Deferred: tm.GetDeferred()})
		d.marks = append(d.marks, mark{At: tm.GetDue().AsTime(), Label: fmt.Sprintf("%s step %d due", tm.GetTriggerId(), tm.GetStep()), Class: "timer"})
	}
}
