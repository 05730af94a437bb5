package profile_test

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

func TestReservations(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	var p profile.Profile
	p.Reserve(profile.Reservation{Key: "a", Channel: "sms", OfferID: "o", Holds: true, At: t0, Expires: t0.Add(5 * time.Minute), Decision: []byte("da")})
	p.Reserve(profile.Reservation{Key: "b", Channel: "push", Holds: true, At: t0, Expires: t0.Add(time.Minute)})
	p.Reserve(profile.Reservation{Key: "c", Channel: "sms", Holds: false, At: t0, Expires: t0.Add(5 * time.Minute)})

	tests := []struct {
		name    string
		channel string
		at      time.Time
		want    int
	}{
		{"sms, both live", "sms", t0, 1},
		{"all channels", "", t0, 2},
		{"push lapsed", "push", t0.Add(time.Minute), 0},
		{"all lapsed", "", t0.Add(5 * time.Minute), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Reserved(tt.channel, tt.at); got != tt.want {
				t.Errorf("Reserved(%q, %v) = %d, want %d", tt.channel, tt.at, got, tt.want)
			}
		})
	}
	if r, ok := p.Reservation("a", t0); !ok || string(r.Decision) != "da" {
		t.Errorf("Reservation(a) = %+v, %v", r, ok)
	}
	if _, ok := p.Reservation("b", t0.Add(2*time.Minute)); ok {
		t.Error("a lapsed reservation is still found")
	}

	// Codec round trip.
	got, err := profile.Decode(profile.Encode(&p))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Reservations, p.Reservations) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got.Reservations, p.Reservations)
	}

	// A message_sent event with the key confirms (drops) the reservation.
	e := profile.Event{ID: "s1", UserID: "u", Type: profile.TypeMessageSent, Channel: "sms", OccurredAt: t0,
		Attributes: map[string]string{profile.AttrIdempotencyKey: "a", profile.AttrOfferID: "o"}}
	if r := p.ApplyEvent(&e, t0, profile.Limits{}.WithDefaults()); r.Status != profile.Applied {
		t.Fatalf("ApplyEvent = %+v", r)
	}
	if _, ok := p.Reservation("a", t0); ok || p.Sends("sms", t0.Add(-time.Hour)) != 1 {
		t.Errorf("after confirmation: reservation a kept or send not counted (%d)", p.Sends("sms", t0.Add(-time.Hour)))
	}

	// Compact drops lapsed reservations.
	p.Compact(t0.Add(2*time.Minute), profile.Limits{}.WithDefaults())
	if len(p.Reservations) != 1 || p.Reservations[0].Key != "c" {
		t.Errorf("after Compact: %+v, want only c", p.Reservations)
	}

	// Reserving a key again replaces it; at most 64 are kept, oldest dropped.
	for i := range 70 {
		p.Reserve(profile.Reservation{Key: fmt.Sprintf("k%d", i), At: t0.Add(time.Duration(i) * time.Second), Expires: t0.Add(time.Hour)})
	}
	if len(p.Reservations) != 64 {
		t.Errorf("%d reservations kept, want 64", len(p.Reservations))
	}
	if _, ok := p.Reservation("c", t0); ok {
		t.Error("the oldest reservation was not the one dropped")
	}
}
