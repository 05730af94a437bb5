package profile

import (
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file is what a profile keeps to measure campaigns (DESIGN.md,
// "Measurement counters"): the user's open attribution windows, one per
// campaign, and the recent conversion events, so that an exposure
// recorded after a conversion that followed it (an event out of order, or
// an exposure a decision recorded after its answer) still attributes it.
// The counters themselves are per bucket in Redis; a step returns its
// changes to them as Measures, which the store writes in the same MULTI
// as the profile, so that a re-sent event (a duplicate) or a retried
// transaction never counts twice.

// Variant is the group of a campaign's split a user is in.
type Variant uint8

// The variants.
const (
	// Treated users get the campaign's action or offer.
	Treated Variant = iota + 1
	// Control users are held out: they get nothing from the campaign, and
	// are measured all the same.
	Control
)

func (v Variant) String() string {
	switch v {
	case Treated:
		return "treated"
	case Control:
		return "control"
	}
	return "unknown"
}

// Exposure is a user's attribution window for a campaign: opened by the
// user's first exposure to it, At, and open for the conversion window
// after it. Further exposures within the window do not count again.
type Exposure struct {
	// Campaign is the id of the trigger, journey step or offer.
	Campaign string
	Variant  Variant
	// At is the time of the exposure that opened the window (event time
	// for an exposure that comes from an event, processing time for one
	// a decision made), to the millisecond.
	At time.Time
	// Converted says the user converted within the window.
	Converted bool
}

// Conversion is a conversion event the profile keeps (to the
// millisecond), with the value it attributes.
type Conversion struct {
	At    time.Time
	Value float64
}

// Measure is a change to a campaign's counters for one variant: users
// exposed, users converted, and the conversion value attributed.
type Measure struct {
	Campaign  string
	Variant   Variant
	Exposed   int64
	Converted int64
	Value     float64
}

// Arm is a campaign variant's counters, summed over users: users
// exposed, users converted, and the conversion value attributed.
type Arm struct {
	Exposed   int64
	Converted int64
	Value     float64
}

// Rate is the share of the exposed users who converted (0 when none was
// exposed).
func (a Arm) Rate() float64 {
	if a.Exposed <= 0 {
		return 0
	}
	return float64(a.Converted) / float64(a.Exposed)
}

// CampaignCounts are a campaign's counters, per variant.
type CampaignCounts struct {
	Treated, Control Arm
}

// Expose records the user's exposure to a campaign at at, under a
// conversion window. It opens an attribution window, and returns the
// measure to count, unless one is open at at (then nothing changes and
// it returns false): a window is open from its exposure until window
// after it, and an exposure earlier than an open window's but within
// window of it falls in it too. A conversion the profile keeps that
// occurred in the new window (after at, at most window after it)
// converts it at once.
func (p *Profile) Expose(campaign string, v Variant, at time.Time, window time.Duration) (Measure, bool) {
	at = at.Truncate(time.Millisecond)
	i := slices.IndexFunc(p.Exposures, func(e Exposure) bool { return e.Campaign == campaign })
	if i >= 0 {
		e := &p.Exposures[i]
		if at.Before(e.At.Add(window)) {
			return Measure{}, false // within the window, or before it: late and not new
		}
	}
	e := Exposure{Campaign: campaign, Variant: v, At: at}
	m := Measure{Campaign: campaign, Variant: v, Exposed: 1}
	for _, c := range p.Conversions {
		if c.At.After(at) && !c.At.After(at.Add(window)) {
			e.Converted = true
			m.Converted, m.Value = 1, c.Value
			break
		}
	}
	if i >= 0 {
		p.Exposures[i] = e
	} else {
		p.Exposures = append(p.Exposures, e)
	}
	return m, true
}

// Convert records a conversion event at at with its value, and returns
// a measure for every open window it converts: a window whose exposure
// is before at, at most window before it, and that has not converted
// yet. It keeps the conversion (at most max, the latest by event time)
// for the exposures recorded later.
func (p *Profile) Convert(at time.Time, value float64, window time.Duration, max int) []Measure {
	at = at.Truncate(time.Millisecond)
	var out []Measure
	for i := range p.Exposures {
		e := &p.Exposures[i]
		if e.Converted || !at.After(e.At) || at.After(e.At.Add(window)) {
			continue
		}
		e.Converted = true
		out = append(out, Measure{Campaign: e.Campaign, Variant: e.Variant, Converted: 1, Value: value})
	}
	j := len(p.Conversions)
	for j > 0 && p.Conversions[j-1].At.After(at) {
		j--
	}
	p.Conversions = slices.Insert(p.Conversions, j, Conversion{At: at, Value: value})
	if n := len(p.Conversions) - max; n > 0 {
		p.Conversions = slices.Delete(p.Conversions, 0, n)
	}
	return out
}

// CompactMeasures forgets, at processing time now, the windows that no
// event the profile can still accept (Limits.Retention) could convert,
// and the conversions older than any exposure that can still be
// recorded; then all but the MaxExposures latest windows.
func (p *Profile) CompactMeasures(now time.Time, window time.Duration, l Limits) {
	horizon := now.Add(-l.Retention)
	p.Exposures = slices.DeleteFunc(p.Exposures, func(e Exposure) bool { return e.At.Add(window).Before(horizon) })
	if n := len(p.Exposures) - l.MaxExposures; n > 0 {
		slices.SortStableFunc(p.Exposures, func(a, b Exposure) int { return a.At.Compare(b.At) })
		p.Exposures = slices.Delete(p.Exposures, 0, n)
	}
	k := 0
	for k < len(p.Conversions) && p.Conversions[k].At.Before(horizon) {
		k++
	}
	p.Conversions = slices.Delete(p.Conversions, 0, k)
	if len(p.Exposures) == 0 {
		p.Exposures = nil
	}
	if len(p.Conversions) == 0 {
		p.Conversions = nil
	}
}

// Stored forms (fields fExposures and fConversions of the profile):
//
//	exposure:   1 campaign, 2 variant, 3 sint64 at ms, 4 converted
//	conversion: 1 sint64 at ms, 2 fixed64 value (absent when 0)
func appendMeasures(b []byte, p *Profile) []byte {
	var msg []byte
	for _, e := range p.Exposures {
		msg = appendString(msg[:0], 1, e.Campaign)
		msg = protowire.AppendTag(msg, 2, protowire.VarintType)
		msg = protowire.AppendVarint(msg, uint64(e.Variant))
		msg = appendSint(msg, 3, e.At.UnixMilli())
		if e.Converted {
			msg = protowire.AppendTag(msg, 4, protowire.VarintType)
			msg = protowire.AppendVarint(msg, 1)
		}
		b = appendMessage(b, fExposures, msg)
	}
	for _, c := range p.Conversions {
		msg = appendSint(msg[:0], 1, c.At.UnixMilli())
		if c.Value != 0 {
			msg = protowire.AppendTag(msg, 2, protowire.Fixed64Type)
			msg = protowire.AppendFixed64(msg, math.Float64bits(c.Value))
		}
		b = appendMessage(b, fConversions, msg)
	}
	return b
}

func decodeExposure(v []byte) (Exposure, error) {
	var e Exposure
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			e.Campaign = string(v)
		case num == 2 && typ == protowire.VarintType:
			e.Variant = Variant(min(x, math.MaxUint8))
		case num == 3 && typ == protowire.VarintType:
			e.At = msTime(protowire.DecodeZigZag(x))
		case num == 4 && typ == protowire.VarintType:
			e.Converted = x != 0
		}
		return nil
	})
	return e, err
}

func decodeConversion(v []byte) (Conversion, error) {
	var c Conversion
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			c.At = msTime(protowire.DecodeZigZag(x))
		case num == 2 && typ == protowire.Fixed64Type:
			c.Value = math.Float64frombits(x)
		}
		return nil
	})
	return c, err
}
