package profile

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Action is a marketing action a trigger emitted. The store writes it to the
// user's outbox stream in the same transaction as the profile update.
type Action struct {
	ID          string
	UserID      string
	TriggerID   string
	Channel     string
	Template    string
	Payload     map[string]string
	TriggeredAt time.Time
	EventID     string
	// RulesVersion is the version of the rules that fired the action.
	RulesVersion string
}

// ActionID is the deterministic id of the action a trigger emits for an
// event, so a sender can deduplicate redeliveries. It does not reveal the
// user id.
func ActionID(userID, eventID, triggerID string) string {
	h := sha256.New()
	h.Write([]byte(userID))
	h.Write([]byte{0})
	h.Write([]byte(eventID))
	h.Write([]byte{0})
	h.Write([]byte(triggerID))
	var sum [sha256.Size]byte
	return "a_" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// Outcome is what a Step did with one user's events.
type Outcome struct {
	// Results has one entry per event, in order.
	Results []Result
	// Actions are written to the outbox with the profile.
	Actions []Action
}

// Changed reports whether any event was applied, that is whether the
// profile must be written.
func (o Outcome) Changed() bool {
	for _, r := range o.Results {
		if r.Status == Applied {
			return true
		}
	}
	return false
}

// Step computes one user's new profile from the stored one (modified in
// place; an empty Profile when the user has none) and the user's events, at
// processing time now. It must be deterministic and free of side effects:
// the store calls it again, on a freshly read profile, when a transaction
// conflicts.
type Step func(p *Profile, events []Event, now time.Time) Outcome
