package decision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// This file turns what a caller could read of a user into the answer it
// gets: the decision on the profile, or the degraded answer when the
// profile could not be read, the stale answer when it is older than the
// caller has written, and the decisions taken with reserve (which hold a
// frequency-cap slot and are replayed for the same idempotency key). The
// server only reads, converts and records; every answer is built here.

// Rule ids of the reasons this file gives.
const (
	ruleDegraded      = "degraded"
	ruleFallback      = "fallback"
	ruleReadYourWrite = "read-your-writes"
)

// Read is what reading a user's profile gave.
type Read struct {
	// Profile is the stored profile (nil when Err is set).
	Profile *profile.Profile
	// Err is the read's error: profile.ErrNotFound for a user without a
	// profile (decided on an empty one), anything else makes the answer
	// degraded.
	Err error
	// Budget is the time the read had, named when it ran out.
	Budget time.Duration
}

// Answer answers req from a read of the user's profile at processing time
// now, stamped with req.ID and the rules' version:
//
//   - the read failed: the channel's Fallback, marked Degraded, with why
//     first among the reasons;
//   - the profile is older than req.MinVersion: VerdictNone, marked Stale
//     (never a decision on data older than the caller wrote);
//   - otherwise Decide (an unknown user is decided on an empty profile).
//
// It is safe for concurrent use.
func (r *Rules) Answer(read Read, req Request, now time.Time) Decision {
	p := read.Profile
	if errors.Is(read.Err, profile.ErrNotFound) {
		p, read.Err = &profile.Profile{}, nil
	}
	var d Decision
	switch {
	case read.Err != nil:
		d = r.Fallback(req.Channel)
		d.Degraded = true
		d.Reasons = append([]Reason{degradedReason(read.Err, read.Budget)}, d.Reasons...)
	case p.Version < req.MinVersion:
		d = r.stale(p.Version, req.MinVersion)
	default:
		d = r.Decide(p, req, now)
	}
	d.ID = req.ID
	return d
}

// stale is the answer on a profile at version have, older than want.
func (r *Rules) stale(have, want uint64) Decision {
	return Decision{
		Verdict:      VerdictNone,
		Stale:        true,
		RulesVersion: r.Version(),
		Reasons: []Reason{{RuleID: ruleReadYourWrite, Message: fmt.Sprintf(
			"stored profile is at version %d, older than the requested minimum %d: not deciding on stale data", have, want)}},
	}
}

// degradedReason is the first reason of a degraded answer: why the
// profile could not be read.
func degradedReason(err error, budget time.Duration) Reason {
	var msg string
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg = "profile read exceeded its budget of " + budget.String()
	case errors.Is(err, profile.ErrCorrupt):
		msg = "stored profile cannot be decoded (the server's log has the details)"
	default:
		msg = "profile store unavailable: " + storeCause(err)
	}
	return Reason{RuleID: ruleDegraded, Message: msg}
}

// storeCause names why the store could not be reached, for callers: the
// kind of failure, never its text, which names internal addresses (a
// go-redis timeout reads "read tcp 10.0.0.5:46478->10.0.0.9:6379: i/o
// timeout"). Errors the server makes itself (the breaker, saturation)
// carry no address and are kept as they are.
func storeCause(err error) string {
	var ne net.Error
	var op *net.OpError
	switch {
	case !errors.Is(err, profile.ErrUnavailable):
		return err.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		return "connection lost"
	case errors.As(err, &op):
		return "network error on " + op.Op
	}
	return "the store answered with an error (the server's log has the details)"
}

// Reserved is a decision taken with reserve.
type Reserved struct {
	Decision
	// Fresh says the decision was taken now and recorded in the profile
	// (which must then be written); false when it replays the decision
	// taken earlier with the same key, or is stale.
	Fresh bool
}

// Reserve is the step of a decision taken with reserve (idempotency key
// key), run on the user's profile inside its transaction at processing
// time now. It returns the live decision taken earlier with the key, as it
// was; or, when the profile is older than req.MinVersion, the stale answer;
// or it decides and records the decision under the key in p: a send holds
// a frequency-cap slot (it counts as a send on its channel) until a
// message_sent event with the key confirms it or ttl passes. The expiry
// announced is the one stored (milliseconds), so the slot never returns
// before the time the sender was told.
//
// It must stay free of side effects beyond p: the store runs it again on a
// freshly read profile when the transaction conflicts.
func (r *Rules) Reserve(p *profile.Profile, req Request, key string, ttl time.Duration, now time.Time) Reserved {
	if res, ok := p.Reservation(key, now); ok {
		if d, err := decodeDecision(res.Decision); err == nil {
			return Reserved{Decision: d}
		}
		// Not a decision this version stored: decided again, replacing it.
	}
	if p.Version < req.MinVersion {
		d := r.stale(p.Version, req.MinVersion)
		d.ID = req.ID
		return Reserved{Decision: d}
	}
	d := r.Decide(p, req, now)
	d.ID = req.ID
	expires := now.Add(ttl).Truncate(time.Millisecond)
	holds := d.Verdict == VerdictSend
	if holds {
		d.Hold = &Hold{Key: key, ExpiresAt: expires}
	}
	offerID := ""
	if d.Offer != nil {
		offerID = d.Offer.ID
	}
	p.Reserve(profile.Reservation{Key: key, Channel: req.Channel, OfferID: offerID, Holds: holds, At: now, Expires: expires, Decision: encodeDecision(d)})
	return Reserved{Decision: d, Fresh: true}
}

// ReserveFailed is the answer to a decision with reserve whose transaction
// could not run (err, within budget): VerdictNone, degraded, never a send
// without its reservation.
func (r *Rules) ReserveFailed(req Request, err error, budget time.Duration) Decision {
	return Decision{
		ID:           req.ID,
		Verdict:      VerdictNone,
		Degraded:     true,
		RulesVersion: r.Version(),
		Reasons: []Reason{degradedReason(err, budget),
			{RuleID: ruleFallback, Message: "no send without a reservation: ask again with the same idempotency_key"}},
	}
}

// encodeDecision is the form of a decision kept in a reservation: JSON of
// Decision itself, so that it outlives changes of the API's messages.
func encodeDecision(d Decision) []byte {
	b, err := json.Marshal(d)
	if err != nil {
		panic(fmt.Sprintf("decision: encode a decision: %v", err)) // plain fields cannot fail
	}
	return b
}

func decodeDecision(b []byte) (Decision, error) {
	var d Decision
	if err := json.Unmarshal(b, &d); err != nil {
		return Decision{}, err
	}
	if d.Verdict < VerdictNone || d.Verdict > VerdictHold {
		return Decision{}, fmt.Errorf("stored decision with verdict %d", d.Verdict)
	}
	return d, nil
}
