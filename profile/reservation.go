package profile

import (
	"sort"
	"time"
)

// AttrIdempotencyKey is the attribute of a message_sent event that confirms
// a reservation: the send the reservation held a cap slot for happened, so
// the reservation gives way to the send record.
const AttrIdempotencyKey = "idempotency_key"

// Reservation is a decision taken with reserve: a sender asked, with an
// idempotency key, for a decision it is about to act on. A reservation that
// Holds a frequency-cap slot counts as a send on its channel until it is
// confirmed (a message_sent event carrying its key) or expires.
type Reservation struct {
	Key     string
	Channel string
	OfferID string
	// Holds is whether the reservation takes a cap slot (the decision was
	// to send). Reservations of other verdicts only make the answer
	// idempotent.
	Holds bool
	// At and Expires are processing times.
	At, Expires time.Time
	// Decision is the caller's encoding of the decision, returned as it is
	// when the same key asks again.
	Decision []byte
}

// maxReservations bounds the reservations kept per user; the oldest go
// first.
const maxReservations = 64

// Reservation returns the live reservation with the key at processing time
// now.
func (p *Profile) Reservation(key string, now time.Time) (Reservation, bool) {
	for _, r := range p.Reservations {
		if r.Key == key && r.Expires.After(now) {
			return r, true
		}
	}
	return Reservation{}, false
}

// Reserve records a reservation, replacing an expired one with the same key.
func (p *Profile) Reserve(r Reservation) {
	kept := p.Reservations[:0]
	for _, old := range p.Reservations {
		if old.Key != r.Key {
			kept = append(kept, old)
		}
	}
	p.Reservations = append(kept, r)
	if n := len(p.Reservations) - maxReservations; n > 0 {
		sort.SliceStable(p.Reservations, func(a, b int) bool { return p.Reservations[a].At.Before(p.Reservations[b].At) })
		p.Reservations = append(p.Reservations[:0], p.Reservations[n:]...)
	}
}

// Reserved counts the live reservations holding a cap slot on channel ("":
// every channel) at processing time now.
func (p *Profile) Reserved(channel string, now time.Time) int {
	n := 0
	for _, r := range p.Reservations {
		if r.Holds && r.Expires.After(now) && (channel == "" || r.Channel == channel) {
			n++
		}
	}
	return n
}

// confirmReservation drops the reservation a message_sent event confirms.
func (p *Profile) confirmReservation(key string) {
	if key == "" {
		return
	}
	kept := p.Reservations[:0]
	for _, r := range p.Reservations {
		if r.Key != key {
			kept = append(kept, r)
		}
	}
	p.Reservations = kept
}

// compactReservations drops expired reservations.
func (p *Profile) compactReservations(now time.Time) {
	kept := p.Reservations[:0]
	for _, r := range p.Reservations {
		if r.Expires.After(now) {
			kept = append(kept, r)
		}
	}
	clear(p.Reservations[len(kept):])
	p.Reservations = kept
	if len(p.Reservations) == 0 {
		p.Reservations = nil
	}
}
