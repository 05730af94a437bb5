package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nudge-dm/nudge/audit"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The admin RPCs behind nudgectl decisions tail and actions dead
// (AdminService.TailDecisions and ListDeadActions, role admin or console): through
// nudged, so tokens apply and the embedded store works, with the output
// the commands printed when they read Redis themselves.

const (
	// maxTailLimit is the most entries one tail may ask for
	// (TailDecisionsRequest.limit).
	maxTailLimit = 1_000_000
	// deadPage is the most dead actions asked for in one call
	// (ListDeadActionsRequest.limit).
	deadPage = 1000
)

// tailDecisionsRPC follows the decision log, calling emit for each entry
// in order: the decisions recorded after the call starts, or with
// fromOldest from the oldest kept. It returns nil once limit entries were
// emitted (limit > 0) or when ctx ends (an interrupt), emit's error when
// it fails, and otherwise the call's (UNAVAILABLE when nudged shuts down).
func tailDecisionsRPC(ctx context.Context, c nudgev1.AdminServiceClient, fromOldest bool, limit int, emit func(*nudgev1.DecisionLogEntry) error) error {
	if limit < 0 || limit > maxTailLimit {
		return fmt.Errorf("at most %d entries (0: follow), not %d", maxTailLimit, limit)
	}
	call, cancel := context.WithCancel(ctx) // ends the call when emit fails
	defer cancel()
	stream, err := c.TailDecisions(call, &nudgev1.TailDecisionsRequest{FromOldest: fromOldest, Limit: uint32(limit)})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for {
		resp, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil // the limit was reached
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			return err
		}
		for _, e := range resp.GetEntries() {
			if err := emit(e); err != nil {
				return err
			}
		}
	}
}

// listDeadRPC lists up to limit dead-lettered actions (limit ≤ 0: all),
// oldest first, a page of at most deadPage per call.
func listDeadRPC(ctx context.Context, c nudgev1.AdminServiceClient, limit int) ([]*nudgev1.DeadAction, error) {
	var out []*nudgev1.DeadAction
	after := ""
	for limit <= 0 || len(out) < limit {
		n := deadPage
		if limit > 0 {
			n = min(n, limit-len(out))
		}
		resp, err := c.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{Limit: uint32(n), After: after})
		if err != nil {
			return out, err
		}
		page := resp.GetDeadActions()
		out = append(out, page...)
		if len(page) < n {
			break
		}
		after = page[len(page)-1].GetId()
	}
	return out, nil
}

// decisionAuditEntry is the entry as the audit package has it.
func decisionAuditEntry(e *nudgev1.DecisionLogEntry) audit.Entry {
	a := audit.Entry{
		DecisionID:     e.GetDecisionId(),
		At:             e.GetAt().AsTime(),
		UserID:         e.GetUserId(),
		Channel:        e.GetChannel(),
		Placement:      e.GetPlacement(),
		Verdict:        strings.ToLower(strings.TrimPrefix(e.GetVerdict().String(), "VERDICT_")),
		OfferID:        e.GetOfferId(),
		Degraded:       e.GetDegraded(),
		Stale:          e.GetStale(),
		Control:        e.GetControl(),
		ProfileVersion: e.GetProfileVersion(),
		RulesVersion:   e.GetRulesVersion(),
	}
	for _, r := range e.GetReasons() {
		a.Reasons = append(a.Reasons, audit.Reason{RuleID: r.GetRuleId(), Message: r.GetMessage()})
	}
	return a
}

// formatDecisionLogEntry is an entry as decisions tail prints it for
// people: one line, and its reasons indented below.
func formatDecisionLogEntry(pe *nudgev1.DecisionLogEntry) string {
	e := decisionAuditEntry(pe)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s user=%s channel=%s %s", e.At.Format("2006-01-02T15:04:05.000Z07:00"), e.DecisionID, e.UserID, e.Channel, strings.ToUpper(e.Verdict))
	if e.OfferID != "" {
		fmt.Fprintf(&b, " offer=%s", e.OfferID)
	}
	for _, flag := range []struct {
		on   bool
		name string
	}{{e.Degraded, "degraded"}, {e.Stale, "stale"}, {e.Control, "control"}} {
		if flag.on {
			b.WriteString(" " + flag.name)
		}
	}
	fmt.Fprintf(&b, " v%d rules=%s", e.ProfileVersion, e.RulesVersion)
	for _, r := range e.Reasons {
		fmt.Fprintf(&b, "\n    [%s] %s", r.RuleID, r.Message)
	}
	return b.String()
}

// decisionLogEntryJSON is an entry as decisions tail --json prints it:
// one JSON object, the audit stream's fields.
func decisionLogEntryJSON(pe *nudgev1.DecisionLogEntry) string {
	b, _ := json.Marshal(decisionAuditEntry(pe)) // a plain struct cannot fail
	return string(b)
}

// deadActionRows are the dead actions as actions dead prints them for
// people (printDeadLetters).
func deadActionRows(dead []*nudgev1.DeadAction) []deadLetterRow {
	rows := make([]deadLetterRow, 0, len(dead))
	for _, d := range dead {
		a := d.GetAction()
		rows = append(rows, deadLetterRow{ID: d.GetId(), Group: d.GetGroup(), Deliveries: int64(d.GetDeliveryCount()),
			Action: a.GetActionId(), User: a.GetUserId(), Trigger: a.GetTriggerId(), Channel: a.GetChannel()})
	}
	return rows
}

// deadActionJSON is a dead action as actions dead --json prints it: one
// JSON object with its id, group, delivery count and the fields of its
// dead-letter entry.
func deadActionJSON(d *nudgev1.DeadAction) string {
	a := d.GetAction()
	// As the outbox stores it: "null" for no payload (an empty one too,
	// which the API cannot tell from none).
	payload, _ := json.Marshal(a.GetPayload()) // map[string]string cannot fail
	fields := map[string]any{
		"action_id":      a.GetActionId(),
		"user_id":        a.GetUserId(),
		"trigger_id":     a.GetTriggerId(),
		"channel":        a.GetChannel(),
		"template":       a.GetTemplate(),
		"payload":        string(payload),
		"event_id":       a.GetEventId(),
		"rules_version":  a.GetRulesVersion(),
		"dead_group":     d.GetGroup(),
		"dead_stream":    d.GetOutboxStream(),
		"dead_id":        d.GetOutboxId(),
		"delivery_count": strconv.FormatUint(uint64(d.GetDeliveryCount()), 10),
	}
	if a.GetTriggeredAt() != nil {
		fields["triggered_at"] = a.GetTriggeredAt().AsTime().UTC().Format(time.RFC3339Nano)
	}
	if a.GetDueAt() != nil {
		fields["due_at"] = a.GetDueAt().AsTime().UTC().Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal(map[string]any{"id": d.GetId(), "group": d.GetGroup(), "delivery_count": d.GetDeliveryCount(), "fields": fields})
	return string(b)
}
