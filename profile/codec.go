package profile

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// encodingV1 is the first byte of every stored profile. The rest is
// protobuf wire format (fields below), so fields can be added without a new
// version: decoders skip what they do not know.
const encodingV1 = 0x01

// Field numbers of the stored profile.
const (
	fVersion       = 1  // varint
	fUpdatedAt     = 2  // sint64, Unix ms
	fSeries        = 3  // message (encodeSeries): 1 type, 2 category, 3-5 the tiers, 6-8 their values
	fTotals        = 4  // message: 1 type, 2 count
	fLastSeen      = 5  // message: 1 type, 2 sint64 Unix ms
	fPurchaseCount = 6  // varint
	fPurchaseValue = 7  // fixed64 double
	fConsent       = 8  // message: 1 channel, 2 granted, 3 sint64 Unix ms
	fAttributes    = 9  // message: 1 key, 2 value, 3 sint64 Unix ms
	fSeenHashes    = 10 // before the tiers: packed fixed64, read only
	fSeenAt        = 11 // before the tiers: packed sint64, delta-encoded Unix ms, read only
	fFired         = 12 // message: 1 key, 2 sint64 Unix ms
	fSends         = 13 // message per send, oldest first: 1 channel, 2 offer id, 3 sint64 Unix ms
	fLastPurchases = 14 // message: 1 category, 2 sint64 Unix ms
	fReservations  = 15 // message: 1 key, 2 channel, 3 offer id, 4 holds, 5 sint64 at ms, 6 sint64 expires ms, 7 decision bytes
	fTimers        = 16 // message per timer, by wake time (timer.go)
	fExposures     = 17 // message per attribution window (measure.go)
	fConversions   = 18 // message per kept conversion, by event time (measure.go)
	fSeenDays      = 19 // message per day of remembered ids: 1 sint64 day, 2 packed fixed64 hashes in the order applied
	fTiers         = 20 // message: 1 sint64 minute from, 2 sint64 hour from, 3 sint64 dedup floor; its presence marks the tiered form
)

// Encode returns the stored form of p. Map entries are written in key order,
// so equal profiles encode to equal bytes.
func Encode(p *Profile) []byte {
	b := make([]byte, 0, 64+16*len(p.Seen)+32*len(p.Series))
	b = append(b, encodingV1)
	if p.Version != 0 {
		b = protowire.AppendTag(b, fVersion, protowire.VarintType)
		b = protowire.AppendVarint(b, p.Version)
	}
	if !p.UpdatedAt.IsZero() {
		b = appendSint(b, fUpdatedAt, p.UpdatedAt.UnixMilli())
	}
	var msg, packed []byte
	for i := range p.Series {
		msg, packed = encodeSeries(msg[:0], packed, &p.Series[i])
		b = appendMessage(b, fSeries, msg)
	}
	if len(p.Series) > 0 || len(p.Seen) > 0 || p.MinuteFrom != 0 || p.HourFrom != 0 || p.DedupFloor != 0 {
		msg = msg[:0]
		if p.MinuteFrom != 0 {
			msg = appendSint(msg, 1, p.MinuteFrom)
		}
		if p.HourFrom != 0 {
			msg = appendSint(msg, 2, p.HourFrom)
		}
		if p.DedupFloor != 0 {
			msg = appendSint(msg, 3, p.DedupFloor)
		}
		b = appendMessage(b, fTiers, msg)
	}
	for _, k := range sortedKeys(p.Totals) {
		msg = appendString(msg[:0], 1, k)
		msg = protowire.AppendTag(msg, 2, protowire.VarintType)
		msg = protowire.AppendVarint(msg, p.Totals[k])
		b = appendMessage(b, fTotals, msg)
	}
	for _, k := range sortedKeys(p.LastSeen) {
		msg = appendString(msg[:0], 1, k)
		msg = appendSint(msg, 2, p.LastSeen[k].UnixMilli())
		b = appendMessage(b, fLastSeen, msg)
	}
	if p.PurchaseCount != 0 {
		b = protowire.AppendTag(b, fPurchaseCount, protowire.VarintType)
		b = protowire.AppendVarint(b, p.PurchaseCount)
	}
	if p.PurchaseValue != 0 {
		b = protowire.AppendTag(b, fPurchaseValue, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(p.PurchaseValue))
	}
	for _, k := range sortedKeys(p.Consent) {
		c := p.Consent[k]
		msg = appendString(msg[:0], 1, k)
		msg = protowire.AppendTag(msg, 2, protowire.VarintType)
		msg = protowire.AppendVarint(msg, protowire.EncodeBool(c.Granted))
		msg = appendSint(msg, 3, c.At.UnixMilli())
		b = appendMessage(b, fConsent, msg)
	}
	for _, k := range sortedKeys(p.Attributes) {
		a := p.Attributes[k]
		msg = appendString(msg[:0], 1, k)
		msg = appendString(msg, 2, a.Value)
		if !a.At.IsZero() {
			msg = appendSint(msg, 3, a.At.UnixMilli())
		}
		b = appendMessage(b, fAttributes, msg)
	}
	for _, d := range p.Seen {
		msg = appendSint(msg[:0], 1, d.Day)
		msg = protowire.AppendTag(msg, 2, protowire.BytesType)
		msg = protowire.AppendVarint(msg, uint64(8*len(d.Hashes)))
		for _, h := range d.Hashes {
			msg = protowire.AppendFixed64(msg, h)
		}
		b = appendMessage(b, fSeenDays, msg)
	}
	for _, k := range sortedKeys(p.Fired) {
		msg = appendString(msg[:0], 1, k)
		msg = appendSint(msg, 2, p.Fired[k].UnixMilli())
		b = appendMessage(b, fFired, msg)
	}
	for _, s := range p.SendLog {
		msg = msg[:0]
		if s.Channel != "" {
			msg = appendString(msg, 1, s.Channel)
		}
		if s.OfferID != "" {
			msg = appendString(msg, 2, s.OfferID)
		}
		msg = appendSint(msg, 3, s.At.UnixMilli())
		b = appendMessage(b, fSends, msg)
	}
	for _, k := range sortedKeys(p.LastPurchases) {
		msg = appendString(msg[:0], 1, k)
		msg = appendSint(msg, 2, p.LastPurchases[k].UnixMilli())
		b = appendMessage(b, fLastPurchases, msg)
	}
	for _, r := range p.Reservations {
		msg = appendString(msg[:0], 1, r.Key)
		msg = appendString(msg, 2, r.Channel)
		msg = appendString(msg, 3, r.OfferID)
		msg = protowire.AppendTag(msg, 4, protowire.VarintType)
		msg = protowire.AppendVarint(msg, protowire.EncodeBool(r.Holds))
		msg = appendSint(msg, 5, r.At.UnixMilli())
		msg = appendSint(msg, 6, r.Expires.UnixMilli())
		msg = protowire.AppendTag(msg, 7, protowire.BytesType)
		msg = protowire.AppendBytes(msg, r.Decision)
		b = appendMessage(b, fReservations, msg)
	}
	for i := range p.Timers {
		b = appendTimer(b, &p.Timers[i])
	}
	return appendMeasures(b, p)
}

// Decode parses a stored profile. Unknown fields are skipped.
func Decode(b []byte) (*Profile, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrCorrupt)
	}
	if b[0] != encodingV1 {
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrCorrupt, b[0])
	}
	p := &Profile{}
	presize(p, b[1:])
	var legacySeen []uint64
	var seenAt []int64
	tiered := false
	err := eachField(b[1:], func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == fVersion && typ == protowire.VarintType:
			p.Version = x
		case num == fUpdatedAt && typ == protowire.VarintType:
			p.UpdatedAt = msTime(protowire.DecodeZigZag(x))
		case num == fSeries && typ == protowire.BytesType:
			s, err := decodeSeries(v)
			if err != nil {
				return err
			}
			p.Series = append(p.Series, s)
		case num == fTotals && typ == protowire.BytesType:
			k, n, err := decodePair(v)
			if err != nil {
				return err
			}
			if p.Totals == nil {
				p.Totals = make(map[string]uint64)
			}
			p.Totals[k] = n
		case num == fLastSeen && typ == protowire.BytesType:
			k, ms, err := decodePair(v)
			if err != nil {
				return err
			}
			if p.LastSeen == nil {
				p.LastSeen = make(map[string]time.Time)
			}
			p.LastSeen[k] = msTime(protowire.DecodeZigZag(ms))
		case num == fPurchaseCount && typ == protowire.VarintType:
			p.PurchaseCount = x
		case num == fPurchaseValue && typ == protowire.Fixed64Type:
			p.PurchaseValue = math.Float64frombits(x)
		case num == fConsent && typ == protowire.BytesType:
			var ch string
			var c ConsentState
			err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					ch = string(v)
				case num == 2 && typ == protowire.VarintType:
					c.Granted = protowire.DecodeBool(x)
				case num == 3 && typ == protowire.VarintType:
					c.At = msTime(protowire.DecodeZigZag(x))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if p.Consent == nil {
				p.Consent = make(map[string]ConsentState)
			}
			p.Consent[ch] = c
		case num == fAttributes && typ == protowire.BytesType:
			var k string
			var a Attribute
			err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					k = string(v)
				case num == 2 && typ == protowire.BytesType:
					a.Value = string(v)
				case num == 3 && typ == protowire.VarintType:
					a.At = msTime(protowire.DecodeZigZag(x))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if p.Attributes == nil {
				p.Attributes = make(map[string]Attribute)
			}
			p.Attributes[k] = a
		case num == fSeenHashes && typ == protowire.BytesType:
			if len(v)%8 != 0 {
				return fmt.Errorf("%w: seen ids: %d bytes", ErrCorrupt, len(v))
			}
			legacySeen = make([]uint64, 0, len(v)/8)
			for len(v) > 0 {
				h, n := protowire.ConsumeFixed64(v)
				legacySeen = append(legacySeen, h)
				v = v[n:]
			}
		case num == fSeenDays && typ == protowire.BytesType:
			d, err := decodeSeenDay(v)
			if err != nil {
				return err
			}
			p.Seen = append(p.Seen, d)
		case num == fTiers && typ == protowire.BytesType:
			tiered = true
			err := eachField(v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
				if typ != protowire.VarintType {
					return nil
				}
				switch num {
				case 1:
					p.MinuteFrom = protowire.DecodeZigZag(x)
				case 2:
					p.HourFrom = protowire.DecodeZigZag(x)
				case 3:
					p.DedupFloor = protowire.DecodeZigZag(x)
				}
				return nil
			})
			if err != nil {
				return err
			}
		case num == fSeenAt && typ == protowire.BytesType:
			prev := int64(0)
			if seenAt == nil {
				// Encode wrote the hashes first: size for them.
				seenAt = make([]int64, 0, len(legacySeen))
			}
			for len(v) > 0 {
				d, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return fmt.Errorf("%w: seen times: %w", ErrCorrupt, protowire.ParseError(n))
				}
				prev += protowire.DecodeZigZag(d)
				seenAt = append(seenAt, prev)
				v = v[n:]
			}
		case num == fFired && typ == protowire.BytesType:
			k, ms, err := decodePair(v)
			if err != nil {
				return err
			}
			if p.Fired == nil {
				p.Fired = make(map[string]time.Time)
			}
			p.Fired[k] = msTime(protowire.DecodeZigZag(ms))
		case num == fSends && typ == protowire.BytesType:
			var s Send
			err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					s.Channel = string(v)
				case num == 2 && typ == protowire.BytesType:
					s.OfferID = string(v)
				case num == 3 && typ == protowire.VarintType:
					s.At = msTime(protowire.DecodeZigZag(x))
				}
				return nil
			})
			if err != nil {
				return err
			}
			p.SendLog = append(p.SendLog, s)
		case num == fLastPurchases && typ == protowire.BytesType:
			k, ms, err := decodePair(v)
			if err != nil {
				return err
			}
			if p.LastPurchases == nil {
				p.LastPurchases = make(map[string]time.Time)
			}
			p.LastPurchases[k] = msTime(protowire.DecodeZigZag(ms))
		case num == fReservations && typ == protowire.BytesType:
			var r Reservation
			err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					r.Key = string(v)
				case num == 2 && typ == protowire.BytesType:
					r.Channel = string(v)
				case num == 3 && typ == protowire.BytesType:
					r.OfferID = string(v)
				case num == 4 && typ == protowire.VarintType:
					r.Holds = protowire.DecodeBool(x)
				case num == 5 && typ == protowire.VarintType:
					r.At = msTime(protowire.DecodeZigZag(x))
				case num == 6 && typ == protowire.VarintType:
					r.Expires = msTime(protowire.DecodeZigZag(x))
				case num == 7 && typ == protowire.BytesType:
					r.Decision = append([]byte(nil), v...)
				}
				return nil
			})
			if err != nil {
				return err
			}
			p.Reservations = append(p.Reservations, r)
		case num == fTimers && typ == protowire.BytesType:
			t, err := decodeTimer(v)
			if err != nil {
				return err
			}
			p.Timers = append(p.Timers, t)
		case num == fExposures && typ == protowire.BytesType:
			e, err := decodeExposure(v)
			if err != nil {
				return err
			}
			p.Exposures = append(p.Exposures, e)
		case num == fConversions && typ == protowire.BytesType:
			c, err := decodeConversion(v)
			if err != nil {
				return err
			}
			p.Conversions = append(p.Conversions, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(seenAt) != len(legacySeen) {
		return nil, fmt.Errorf("%w: %d seen ids but %d times", ErrCorrupt, len(legacySeen), len(seenAt))
	}
	if !tiered {
		upgrade(p, legacySeen, seenAt)
	}
	if !slices.IsSortedFunc(p.Seen, func(a, b SeenDay) int { return cmp.Compare(a.Day, b.Day) }) {
		return nil, fmt.Errorf("%w: seen days out of order", ErrCorrupt)
	}
	// Sends and LastSent search from the newest: keep the order even if
	// a writer did not (Encode writes them in order, so this is a no-op).
	if !slices.IsSortedFunc(p.SendLog, compareSends) {
		slices.SortStableFunc(p.SendLog, compareSends)
	}
	if !slices.IsSortedFunc(p.Conversions, func(a, b Conversion) int { return a.At.Compare(b.At) }) {
		slices.SortStableFunc(p.Conversions, func(a, b Conversion) int { return a.At.Compare(b.At) })
	}
	if !slices.IsSortedFunc(p.Timers, compareWakes) {
		slices.SortStableFunc(p.Timers, compareWakes)
	}
	for i := 1; i < len(p.Series); i++ {
		a, b := &p.Series[i-1], &p.Series[i]
		if a.Type > b.Type || (a.Type == b.Type && a.Category >= b.Category) {
			return nil, fmt.Errorf("%w: series out of order", ErrCorrupt)
		}
	}
	return p, nil
}

// presize allocates the profile's repeated fields and maps at their
// final size, from a first pass over the top-level tags that allocates
// nothing: decoding is on the path of every decision and feature read,
// and growing them one field at a time was a quarter of its time. A
// malformed b is left for Decode to report.
func presize(p *Profile, b []byte) {
	var series, days, totals, lastSeen int
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			break
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case fSeries:
			series++
		case fSeenDays:
			days++
		case fTotals:
			totals++
		case fLastSeen:
			lastSeen++
		}
	}
	if series > 0 {
		p.Series = make([]Series, 0, series)
	}
	if days > 0 {
		p.Seen = make([]SeenDay, 0, days)
	}
	if totals > 0 {
		p.Totals = make(map[string]uint64, totals)
	}
	if lastSeen > 0 {
		p.LastSeen = make(map[string]time.Time, lastSeen)
	}
}

// packedCount is the number of varints in a packed field (the bytes
// without a continuation bit).
func packedCount(v []byte) int {
	n := 0
	for _, c := range v {
		if c < 0x80 {
			n++
		}
	}
	return n
}

func compareSends(a, b Send) int { return a.At.Compare(b.At) }

func compareWakes(a, b Timer) int { return a.Wake.Compare(b.Wake) }

// Stored form of a series: a message of 1 type, 2 category, and per tier
// (3 minutes, 4 hours, 5 days) packed varints (zigzag delta of At, count)
// for each bucket; then, for a tier with a value other than 0, packed
// doubles (6 minutes, 7 hours, 8 days), one per bucket.
func encodeSeries(msg, packed []byte, s *Series) ([]byte, []byte) {
	msg = appendString(msg, 1, s.Type)
	msg = appendString(msg, 2, s.Category)
	for t := TierMinute; t < numTiers; t++ {
		bs := s.Buckets(t)
		if len(bs) == 0 {
			continue
		}
		packed = packed[:0]
		prev := int64(0)
		valued := false
		for _, b := range bs {
			packed = protowire.AppendVarint(packed, protowire.EncodeZigZag(b.At-prev))
			packed = protowire.AppendVarint(packed, uint64(b.Count))
			prev = b.At
			valued = valued || b.Value != 0
		}
		msg = protowire.AppendTag(msg, protowire.Number(3+t), protowire.BytesType)
		msg = protowire.AppendBytes(msg, packed)
		if valued {
			msg = protowire.AppendTag(msg, protowire.Number(6+t), protowire.BytesType)
			msg = protowire.AppendVarint(msg, uint64(8*len(bs)))
			for _, b := range bs {
				msg = protowire.AppendFixed64(msg, math.Float64bits(b.Value))
			}
		}
	}
	return msg, packed
}

func decodeSeries(v []byte) (Series, error) {
	var s Series
	var values [numTiers][]float64
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			s.Type = string(v)
		case 2:
			s.Category = string(v)
		case 3, 4, 5:
			// Buckets are delta-encoded across every occurrence of the
			// field, so a split packed field decodes the same.
			bs := s.tier(Tier(num - 3))
			prev := int64(0)
			if len(*bs) > 0 {
				prev = (*bs)[len(*bs)-1].At
			} else if n := packedCount(v) / 2; n > 0 {
				// Not for an empty field: a tier without buckets stays
				// nil, as encoding it again gives.
				*bs = make([]Bucket, 0, n)
			}
			for len(v) > 0 {
				d, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return fmt.Errorf("%w: series buckets: %w", ErrCorrupt, protowire.ParseError(n))
				}
				v = v[n:]
				c, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return fmt.Errorf("%w: series counts: %w", ErrCorrupt, protowire.ParseError(n))
				}
				v = v[n:]
				m := prev + protowire.DecodeZigZag(d)
				if len(*bs) > 0 && m <= prev || c > math.MaxUint32 {
					return fmt.Errorf("%w: series buckets out of order", ErrCorrupt)
				}
				*bs = append(*bs, Bucket{At: m, Count: uint32(c)})
				prev = m
			}
		case 6, 7, 8:
			if len(v)%8 != 0 {
				return fmt.Errorf("%w: series values: %d bytes", ErrCorrupt, len(v))
			}
			t := num - 6
			for len(v) > 0 {
				x, n := protowire.ConsumeFixed64(v)
				values[t] = append(values[t], math.Float64frombits(x))
				v = v[n:]
			}
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	if s.empty() {
		return s, fmt.Errorf("%w: empty series", ErrCorrupt)
	}
	for t := TierMinute; t < numTiers; t++ {
		if values[t] == nil {
			continue
		}
		bs := s.Buckets(t)
		if len(values[t]) != len(bs) {
			return s, fmt.Errorf("%w: series: %d %s buckets but %d values", ErrCorrupt, len(bs), t, len(values[t]))
		}
		for i := range bs {
			bs[i].Value = values[t][i]
		}
	}
	return s, nil
}

func decodeSeenDay(v []byte) (SeenDay, error) {
	var d SeenDay
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			d.Day = protowire.DecodeZigZag(x)
		case num == 2 && typ == protowire.BytesType:
			if len(v)%8 != 0 {
				return fmt.Errorf("%w: seen ids: %d bytes", ErrCorrupt, len(v))
			}
			d.Hashes = slices.Grow(d.Hashes, len(v)/8)
			for len(v) > 0 {
				h, n := protowire.ConsumeFixed64(v)
				d.Hashes = append(d.Hashes, h)
				v = v[n:]
			}
		}
		return nil
	})
	return d, err
}

// upgrade brings a profile stored before the tiers (issue 19) to the
// tiered form: its minutes held every event it had accepted and kept, so
// they fill the hour and day tiers too (MinuteFrom and HourFrom stay 0:
// the minutes are complete); its event ids, remembered by processing
// time, are kept under the day they were applied, no earlier than their
// events' (so they are kept at least as long as needed).
func upgrade(p *Profile, hashes []uint64, at []int64) {
	for i := range p.Series {
		p.Series[i].rollUp()
	}
	for i, h := range hashes {
		p.seenDay(floorDiv(at[i], 86_400_000)).remember(h)
	}
}

// decodePair decodes a message {1: string, 2: varint}.
func decodePair(v []byte) (string, uint64, error) {
	var k string
	var x uint64
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			k = string(v)
		case num == 2 && typ == protowire.VarintType:
			x = n
		}
		return nil
	})
	return k, x, err
}

// eachField calls fn for every field of a protobuf message: v holds the
// bytes of length-delimited fields, x the value of varint and fixed fields.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %w", ErrCorrupt, protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.Fixed32Type:
			var y uint32
			y, n = protowire.ConsumeFixed32(b)
			x = uint64(y)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("%w: field %d: %w", ErrCorrupt, num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendSint(b []byte, num protowire.Number, v int64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, protowire.EncodeZigZag(v))
}

func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
