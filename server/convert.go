package server

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// EventFromProto converts an API event to the model's (the event must be
// valid: see the protovalidate rules of nudge.v1.Event).
func EventFromProto(e *nudgev1.Event) profile.Event {
	return profile.Event{
		ID:         e.GetEventId(),
		UserID:     e.GetUserId(),
		Type:       e.GetType(),
		OccurredAt: e.GetOccurredAt().AsTime(),
		Category:   e.GetCategory(),
		ItemID:     e.GetItemId(),
		Value:      e.GetValue(),
		Channel:    e.GetChannel(),
		Attributes: e.GetAttributes(),
	}
}

// ActionToProto converts a model action to the API's, as ActionService,
// ingest responses and webhooks carry it.
func ActionToProto(a *profile.Action) *nudgev1.Action {
	pa := &nudgev1.Action{
		ActionId:     a.ID,
		UserId:       a.UserID,
		TriggerId:    a.TriggerID,
		Channel:      a.Channel,
		Template:     a.Template,
		Payload:      a.Payload,
		TriggeredAt:  timestamppb.New(a.TriggeredAt),
		EventId:      a.EventID,
		RulesVersion: a.RulesVersion,
	}
	if !a.DueAt.IsZero() {
		pa.DueAt = timestamppb.New(a.DueAt)
	}
	return pa
}

func statusToProto(s profile.Status) nudgev1.EventStatus {
	switch s {
	case profile.Applied:
		return nudgev1.EventStatus_EVENT_STATUS_APPLIED
	case profile.Duplicate:
		return nudgev1.EventStatus_EVENT_STATUS_DUPLICATE
	case profile.Rejected:
		return nudgev1.EventStatus_EVENT_STATUS_REJECTED
	}
	return nudgev1.EventStatus_EVENT_STATUS_UNSPECIFIED
}

func verdictToProto(v decision.Verdict) nudgev1.Verdict {
	switch v {
	case decision.VerdictSend:
		return nudgev1.Verdict_VERDICT_SEND
	case decision.VerdictHold:
		return nudgev1.Verdict_VERDICT_HOLD
	case decision.VerdictNone:
		return nudgev1.Verdict_VERDICT_NONE
	}
	return nudgev1.Verdict_VERDICT_UNSPECIFIED
}

func decisionToProto(d decision.Decision) *nudgev1.Decision {
	out := &nudgev1.Decision{
		Verdict:      verdictToProto(d.Verdict),
		DecisionId:   d.ID,
		RulesVersion: d.RulesVersion,
		Control:      d.Control,
		Degraded:     d.Degraded,
		Stale:        d.Stale,
	}
	if d.Offer != nil {
		out.Offer = &nudgev1.Offer{
			Id:       d.Offer.ID,
			Channel:  d.Offer.Channel,
			Template: d.Offer.Template,
			Payload:  d.Offer.Payload,
		}
	}
	for _, r := range d.Reasons {
		out.Reasons = append(out.Reasons, &nudgev1.Reason{RuleId: r.RuleID, Message: r.Message})
	}
	if !d.NotBefore.IsZero() {
		out.NotBefore = timestamppb.New(d.NotBefore)
	}
	if d.Hold != nil {
		out.Reservation = &nudgev1.Reservation{IdempotencyKey: d.Hold.Key, ExpiresAt: timestamppb.New(d.Hold.ExpiresAt)}
	}
	for _, t := range d.Trace {
		out.Trace = append(out.Trace, &nudgev1.TraceStep{RuleId: t.RuleID, Subject: t.Subject, Value: t.Value, Passed: t.Passed})
	}
	return out
}

// profileWindows are the windows GetProfile reports counts for.
var profileWindows = [...]time.Duration{5 * time.Minute, 30 * time.Minute, time.Hour, 24 * time.Hour,
	7 * 24 * time.Hour, 30 * 24 * time.Hour, 90 * 24 * time.Hour}

func profileToProto(userID string, p *profile.Profile, now time.Time) *nudgev1.Profile {
	out := &nudgev1.Profile{
		UserId:             userID,
		Version:            p.Version,
		UpdatedAt:          timestamppb.New(p.UpdatedAt),
		LastSeen:           make(map[string]*timestamppb.Timestamp, len(p.LastSeen)),
		Totals:             p.Totals,
		PurchaseCount:      p.PurchaseCount,
		PurchaseValue:      p.PurchaseValue,
		Consent:            make(map[string]bool, len(p.Consent)),
		Attributes:         make(map[string]string, len(p.Attributes)),
		RememberedEventIds: uint32(p.RememberedIDs()),
	}
	for k, a := range p.Attributes {
		out.Attributes[k] = a.Value
	}
	for typ, t := range p.LastSeen {
		out.LastSeen[typ] = timestamppb.New(t)
	}
	for ch, c := range p.Consent {
		if ch == profile.AllChannels {
			out.GlobalOptOut = !c.Granted
			continue
		}
		out.Consent[ch] = p.Consented(ch)
	}
	// Per (type, category), then per type over all categories.
	var types []string
	for _, s := range p.Series {
		if len(types) == 0 || types[len(types)-1] != s.Type {
			types = append(types, s.Type)
		}
		if s.Category == "" {
			continue
		}
		out.Counts = appendCounts(out.Counts, p, s.Type, s.Category, now)
	}
	for _, typ := range types {
		out.Counts = appendCounts(out.Counts, p, typ, "", now)
	}
	for _, e := range p.Exposures {
		out.Exposures = append(out.Exposures, &nudgev1.CampaignExposure{
			CampaignId: e.Campaign, Variant: e.Variant.String(), ExposedAt: timestamppb.New(e.At), Converted: e.Converted,
		})
	}
	return out
}

func appendCounts(counts []*nudgev1.WindowedCount, p *profile.Profile, typ, category string, now time.Time) []*nudgev1.WindowedCount {
	for _, w := range profileWindows {
		counts = append(counts, &nudgev1.WindowedCount{
			Type:     typ,
			Category: category,
			Window:   durationpb.New(w),
			Count:    uint64(p.Count(typ, category, w, now)),
		})
	}
	return counts
}

// actionsToProto converts actions for the API; nil for none.
func actionsToProto(actions []profile.Action) []*nudgev1.Action {
	if len(actions) == 0 {
		return nil
	}
	out := make([]*nudgev1.Action, len(actions))
	for i := range actions {
		out[i] = ActionToProto(&actions[i])
	}
	return out
}
