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
	// DueAt is when the journey step that fired the action was due; zero
	// for an action fired by its event.
	DueAt   time.Time
	EventID string
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
	// Notes say what became of the journey steps and trigger actions the
	// step judged, for metrics. Like actions, they count only when the
	// transaction commits.
	Notes []Note
	// Measures are the changes to campaign counters (exposures,
	// conversions) the step made; the store writes them in the same
	// MULTI as the profile, and only when it writes the profile.
	Measures []Measure
	// Changed says that the step changed the profile, so that it must be
	// written (with Actions). A step that sets it to false leaves the
	// stored profile as it was, whatever it did to its copy, and its
	// actions are dropped.
	Changed bool
}

// Step computes one user's new profile from the stored one (modified in
// place; an empty Profile when the user has none) and the user's events
// (none for an update that is not about events, such as a reservation), at
// processing time now. It must be deterministic and free of side effects:
// the store calls it again, on a freshly read profile, when a transaction
// conflicts.
type Step func(p *Profile, events []Event, now time.Time) Outcome

// EventOutcome is what became of one event given to the store.
type EventOutcome struct {
	// Result is the step's result for the event; zero when Err is set.
	Result
	// Version is the user's profile version once the transaction that
	// handled the event committed (or the stored version, when it
	// changed nothing).
	Version uint64
	// Err is set when the user's transaction did not commit: ErrConflict,
	// ErrUnavailable, ErrCorrupt, a *PanicError or the context's error,
	// wrapped with the user. Every event of the user in the call has it.
	Err error
}

// BatchOutcome is the outcome of applying a batch of events.
type BatchOutcome struct {
	// Events has one outcome per event given, in the same order.
	Events []EventOutcome
	// Actions are the actions the committed steps emitted (and the store
	// wrote to the outbox), user after user in the order of each user's
	// first event, each user's in the order its step emitted them.
	Actions []Action
	// Notes are the committed steps' notes, in the same order.
	Notes []Note
	// Measures are the committed steps' changes to campaign counters,
	// in the same order.
	Measures []Measure
}

// Note is what became of a trigger's action or a journey step, for the
// operators' counts (a funnel per step).
type Note struct {
	// Trigger is the id of the trigger or journey step.
	Trigger string
	// Kind is one of the Note* constants.
	Kind string
	// Reason says why an action was dropped (a Drop* constant); empty for
	// other kinds.
	Reason string
	// Due is when a fired or dropped journey step was due (zero for an
	// action fired by its event): the lateness of a firing is the commit
	// time minus Due.
	Due time.Time
}

// Kinds of Note.
const (
	NoteScheduled = "scheduled" // a journey step will be judged at its due time
	NoteCancelled = "cancelled" // an unless event cancelled a pending step
	NoteFired     = "fired"     // an action was emitted
	NoteDeferred  = "deferred"  // quiet hours held an action until they end
	NoteDropped   = "dropped"   // no action; Reason says why
	NoteControl   = "control"   // no action: the user is in the campaign's control group
)

// Reasons of a NoteDropped.
const (
	DropWhen         = "when"          // the step's when did not hold at its due time
	DropConsent      = "consent"       // the user has not consented to the channel
	DropCooldown     = "cooldown"      // within the trigger's cooldown
	DropFrequencyCap = "frequency_cap" // a frequency cap of the channel is reached
	DropChannelLimit = "channel_limit" // another trigger of higher priority took the channel
	DropTimerLimit   = "timer_limit"   // the profile holds Limits.MaxTimers timers
	DropRuleRemoved  = "rule_removed"  // the rules no longer have the step
	DropEvalError    = "eval_error"    // an expression failed to evaluate
)

// DeleteResult says what erasing a user removed.
type DeleteResult struct {
	// Existed reports whether the user had a profile.
	Existed bool
	// Actions is the number of the user's outbox entries removed.
	Actions int
	// DeadLetters is the number of the user's dead-letter entries removed.
	DeadLetters int
	// AuditEntries is the number of the user's sampled decisions removed.
	AuditEntries int
}
