package profile

import (
	"cmp"
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Timer is a pending step of a journey: a trigger with a wait (or the
// steps of its then), or a trigger action that quiet hours deferred. It is
// part of the profile, so it is written in the transaction that schedules
// it and removed in the one that fires it; the store keeps an index of
// when each user's next timer is due (Profile.NextWake), written in the
// same transactions.
type Timer struct {
	// Trigger is the id of the journey's trigger (its first step).
	Trigger string
	// Step is the step due: 0 for the trigger itself, k for the k-th step
	// of its then.
	Step int
	// CancelFrom, when positive, is the first step an unless event
	// cancelled: the journey ends before it.
	CancelFrom int
	// Due is when the step is due: the triggering event's time plus the
	// waits of the steps up to this one.
	Due time.Time
	// Wake is when the timer is to be judged: Due, or for a deferred step
	// the end of the quiet hours that held it.
	Wake time.Time
	// Deferred says the step was judged at Due and quiet hours held its
	// action until Wake.
	Deferred bool
	// From is when the journey started: the triggering event's time (or
	// the later time a late event completed the trigger's condition at).
	// The unless events that cancel a step are those after From.
	From time.Time
	// Event is the triggering event.
	Event Event
}

// NextWake returns when the profile's earliest timer is to be judged, or
// the zero time when it has none.
func (p *Profile) NextWake() time.Time {
	if len(p.Timers) == 0 {
		return time.Time{}
	}
	return p.Timers[0].Wake
}

// Schedule adds a timer, keeping Timers sorted by Wake (ties in the order
// added). It refuses (false) when the profile already holds max timers.
func (p *Profile) Schedule(t Timer, max int) bool {
	if len(p.Timers) >= max {
		return false
	}
	i := len(p.Timers)
	for i > 0 && p.Timers[i-1].Wake.After(t.Wake) {
		i--
	}
	p.Timers = slices.Insert(p.Timers, i, t)
	return true
}

// TakeDue removes and returns the timers whose Wake is at or before now,
// earliest first.
func (p *Profile) TakeDue(now time.Time) []Timer {
	n := 0
	for n < len(p.Timers) && !p.Timers[n].Wake.After(now) {
		n++
	}
	if n == 0 {
		return nil
	}
	due := slices.Clone(p.Timers[:n])
	p.Timers = slices.Delete(p.Timers, 0, n)
	if len(p.Timers) == 0 {
		p.Timers = nil
	}
	return due
}

// OccurredBetween reports whether an event of type typ occurred after
// from and at or before to, as far as the profile can tell: exactly when
// the latest such event is in the interval, otherwise from the counts of
// the tier that holds from (tiers.go), which see the buckets wholly after
// from's and up to to's.
func (p *Profile) OccurredBetween(typ string, from, to time.Time) bool {
	last, ok := p.LastSeen[typ]
	if !ok || !last.After(from) {
		return false
	}
	if !last.After(to) {
		return true
	}
	t, lo := p.tierFor(from)
	lo, hi := lo+1, bucketOf(t, to)
	for i := range p.Series {
		s := &p.Series[i]
		if s.Type != typ {
			continue
		}
		if bs := s.since(t, lo); len(bs) > 0 && bs[0].At <= hi {
			return true
		}
	}
	return false
}

// Minutes returns the earliest max minutes (Unix time in minutes) after
// from's minute and at most to's in which events of the given types (any
// type when types is empty) occurred, of the given category only when
// oneCategory, ascending and without duplicates. It allocates only its
// result.
func (p *Profile) Minutes(types []string, category string, oneCategory bool, from, to time.Time, max int) []int64 {
	lo, hi := unixMinute(from)+1, unixMinute(to)
	if hi < lo || max <= 0 {
		return nil
	}
	var out []int64
	for i := range p.Series {
		s := &p.Series[i]
		if (len(types) > 0 && !slices.Contains(types, s.Type)) || (oneCategory && s.Category != category) {
			continue
		}
		// The series' minutes are ascending: find lo, take while <= hi.
		j, _ := slices.BinarySearchFunc(s.Minutes, lo, func(b Bucket, t int64) int { return cmp.Compare(b.At, t) })
		for ; j < len(s.Minutes) && s.Minutes[j].At <= hi; j++ {
			m := s.Minutes[j].At
			k, found := slices.BinarySearch(out, m)
			switch {
			case found:
			case len(out) < max:
				out = slices.Insert(out, k, m)
			case k < len(out):
				copy(out[k+1:], out[k:len(out)-1])
				out[k] = m
			default:
				j = len(s.Minutes) // later minutes of this series are later still
			}
		}
	}
	return out
}

// MinuteEnd is the last millisecond of a minute of Minutes.
func MinuteEnd(minute int64) time.Time {
	return time.UnixMilli((minute+1)*60_000 - 1).UTC()
}

// Stored form of a timer (field fTimers of the profile): a message of
//
//	1 trigger, 2 step, 3 cancel from, 4 sint64 due ms, 5 sint64 wake-due ms
//	(absent when equal), 6 deferred, 7 the event (fields below), 8 sint64
//	from-occurred ms (absent when equal)
//
// and the event: 1 id, 2 type, 3 sint64 occurred ms - due ms, 4 category,
// 5 item id, 6 fixed64 value, 7 channel, 8 attribute (1 key, 2 value).
// Times are relative so that they stay short varints.
func appendTimer(b []byte, t *Timer) []byte {
	var msg []byte
	msg = appendString(msg, 1, t.Trigger)
	if t.Step != 0 {
		msg = protowire.AppendTag(msg, 2, protowire.VarintType)
		msg = protowire.AppendVarint(msg, uint64(t.Step))
	}
	if t.CancelFrom != 0 {
		msg = protowire.AppendTag(msg, 3, protowire.VarintType)
		msg = protowire.AppendVarint(msg, uint64(t.CancelFrom))
	}
	due := t.Due.UnixMilli()
	msg = appendSint(msg, 4, due)
	if w := t.Wake.UnixMilli(); w != due {
		msg = appendSint(msg, 5, w-due)
	}
	if t.Deferred {
		msg = protowire.AppendTag(msg, 6, protowire.VarintType)
		msg = protowire.AppendVarint(msg, 1)
	}
	e := &t.Event
	var ev []byte
	ev = appendString(ev, 1, e.ID)
	ev = appendString(ev, 2, e.Type)
	ev = appendSint(ev, 3, e.OccurredAt.UnixMilli()-due)
	if e.Category != "" {
		ev = appendString(ev, 4, e.Category)
	}
	if e.ItemID != "" {
		ev = appendString(ev, 5, e.ItemID)
	}
	if e.Value != 0 {
		ev = protowire.AppendTag(ev, 6, protowire.Fixed64Type)
		ev = protowire.AppendFixed64(ev, math.Float64bits(e.Value))
	}
	if e.Channel != "" {
		ev = appendString(ev, 7, e.Channel)
	}
	for _, k := range sortedKeys(e.Attributes) {
		kv := appendString(nil, 1, k)
		kv = appendString(kv, 2, e.Attributes[k])
		ev = appendMessage(ev, 8, kv)
	}
	msg = appendMessage(msg, 7, ev)
	if f := t.From.UnixMilli() - e.OccurredAt.UnixMilli(); f != 0 {
		msg = appendSint(msg, 8, f)
	}
	return appendMessage(b, fTimers, msg)
}

func decodeTimer(v []byte) (Timer, error) {
	var t Timer
	var due, wake, at, from int64
	var ev []byte
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			t.Trigger = string(v)
		case num == 2 && typ == protowire.VarintType:
			t.Step = int(min(x, math.MaxInt32))
		case num == 3 && typ == protowire.VarintType:
			t.CancelFrom = int(min(x, math.MaxInt32))
		case num == 4 && typ == protowire.VarintType:
			due = protowire.DecodeZigZag(x)
		case num == 5 && typ == protowire.VarintType:
			wake = protowire.DecodeZigZag(x)
		case num == 6 && typ == protowire.VarintType:
			t.Deferred = x != 0
		case num == 7 && typ == protowire.BytesType:
			ev = v
		case num == 8 && typ == protowire.VarintType:
			from = protowire.DecodeZigZag(x)
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	t.Due, t.Wake = msTime(due), msTime(due+wake)
	e := &t.Event
	err = eachField(ev, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			e.ID = string(v)
		case num == 2 && typ == protowire.BytesType:
			e.Type = string(v)
		case num == 3 && typ == protowire.VarintType:
			at = protowire.DecodeZigZag(x)
		case num == 4 && typ == protowire.BytesType:
			e.Category = string(v)
		case num == 5 && typ == protowire.BytesType:
			e.ItemID = string(v)
		case num == 6 && typ == protowire.Fixed64Type:
			e.Value = math.Float64frombits(x)
		case num == 7 && typ == protowire.BytesType:
			e.Channel = string(v)
		case num == 8 && typ == protowire.BytesType:
			k, val, err := decodeStrings(v)
			if err != nil {
				return err
			}
			if e.Attributes == nil {
				e.Attributes = make(map[string]string)
			}
			e.Attributes[k] = val
		}
		return nil
	})
	e.OccurredAt = msTime(due + at)
	t.From = msTime(due + at + from)
	return t, err
}

// decodeStrings decodes a message {1: string, 2: string}.
func decodeStrings(v []byte) (string, string, error) {
	var k, val string
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			k = string(v)
		case num == 2 && typ == protowire.BytesType:
			val = string(v)
		}
		return nil
	})
	return k, val, err
}
