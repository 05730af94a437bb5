package profile_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/nudge-dm/nudge/profile"
)

// Field numbers of the stored profile, as documented in codec.go. They are
// repeated here on purpose: a change to them breaks stored data, and should
// break these tests too.
const (
	fVersion       = 1
	fUpdatedAt     = 2
	fSeries        = 3
	fTotals        = 4
	fLastSeen      = 5
	fPurchaseCount = 6
	fPurchaseValue = 7
	fConsent       = 8
	fAttributes    = 9
	fSeenHashes    = 10
	fSeenAt        = 11
	fFired         = 12
	fSends         = 13
	fLastPurchases = 14
)

// ms returns the UTC time of Unix milliseconds, the precision a stored
// profile keeps.
func ms(n int64) time.Time { return time.UnixMilli(n).UTC() }

// appliedProfile is a profile built the way production builds them: events
// through ApplyEvent, then Compact.
func appliedProfile(t testing.TB) *profile.Profile {
	t.Helper()
	p := &profile.Profile{}
	now := t0
	events := []profile.Event{
		ev("v1", "view", "shoes", t0.Add(-90*time.Minute)),
		ev("v2", "view", "shoes", t0.Add(-89*time.Minute)),
		ev("v3", "view", "shoes", t0.Add(-89*time.Minute)),
		ev("v4", "view", "hats", t0.Add(-3*time.Minute)),
		ev("v5", "view", "", t0.Add(-3*time.Hour)),
		{ID: "p1", Type: profile.TypePurchase, Category: "shoes", Value: 59.9, OccurredAt: t0.Add(-time.Hour)},
		{ID: "p2", Type: profile.TypePurchase, Category: "hats", Value: 0.1, OccurredAt: t0.Add(-time.Minute)},
		{ID: "u1", Type: profile.TypeUnsubscribe, Channel: "all", OccurredAt: t0.Add(-2 * time.Hour)},
		{ID: "s1", Type: profile.TypeSubscribe, Channel: "sms", OccurredAt: t0.Add(-time.Hour)},
		{ID: "tz", Type: "login", OccurredAt: t0, Attributes: map[string]string{"tz": "Europe/Paris", "ignored": "x"}},
		{ID: "m1", Type: profile.TypeMessageSent, Channel: "sms", OccurredAt: t0.Add(-30 * time.Minute),
			Attributes: map[string]string{profile.AttrOfferID: "phones-coupon"}},
		{ID: "m2", Type: profile.TypeMessageSent, Channel: "push", OccurredAt: t0.Add(-2 * time.Hour)},
		{ID: "m3", Type: profile.TypeMessageSent, OccurredAt: t0.Add(-2 * time.Hour)},
	}
	for i := range events {
		now = now.Add(time.Second)
		if r := p.ApplyEvent(&events[i], now, defaults); r.Status != profile.Applied {
			t.Fatalf("ApplyEvent(%s) = %+v", events[i].ID, r)
		}
	}
	p.MarkFired("welcome", t0.Add(-time.Hour))
	p.MarkFired("cart:shoes", t0)
	p.Compact(now, defaults)
	p.Version = 7
	p.UpdatedAt = now
	return p
}

// edgeProfile exercises the extremes of every field.
func edgeProfile() *profile.Profile {
	return &profile.Profile{
		Version:   math.MaxUint64,
		UpdatedAt: ms(-1), // before the epoch
		Series: []profile.Series{
			{Type: "", Category: "", Minutes: []profile.Bucket{{At: -5, Count: 1}, {At: 0, Count: math.MaxUint32}}},
			{Type: "purchase", Category: "tiers",
				Minutes: []profile.Bucket{{At: 100, Count: 1, Value: 9.5}},
				Hours:   []profile.Bucket{{At: -2, Count: 7}, {At: 1, Count: 1}},
				Days:    []profile.Bucket{{At: 0, Count: 8, Value: -1e15}, {At: 3, Count: 1, Value: math.Inf(1)}}},
			{Type: "view", Category: "", Minutes: []profile.Bucket{{At: math.MinInt64, Count: 0}, {At: math.MaxInt64, Count: 2}}},
			{Type: "view", Category: "日本語", Minutes: []profile.Bucket{{At: 1, Count: 2}, {At: 1 << 40, Count: 3}}},
		},
		MinuteFrom:    -7,
		HourFrom:      math.MaxInt64,
		DedupFloor:    20_000,
		Totals:        map[string]uint64{"": 0, "view": math.MaxUint64, "ünïcode": 1},
		LastSeen:      map[string]time.Time{"view": ms(1741608000123), "zero": {}, "far": ms(math.MaxInt64)},
		PurchaseCount: 3,
		PurchaseValue: -12.75,
		Consent: map[string]profile.ConsentState{
			profile.AllChannels: {Granted: false, At: ms(1741608000000)},
			"sms":               {Granted: true, At: ms(-62135596800000)},
			"":                  {},
		},
		Attributes: map[string]profile.Attribute{"tz": {}, "": {Value: "empty key", At: ms(-7)}},
		Seen: []profile.SeenDay{
			{Day: math.MinInt64, Hashes: []uint64{0, 42}}, {Day: -3, Hashes: []uint64{43, math.MaxUint64}}, {Day: math.MaxInt64, Hashes: []uint64{7}},
		},
		Fired: map[string]time.Time{"cooldown": ms(1), "": ms(math.MinInt64)},
		SendLog: []profile.Send{
			{Channel: "", OfferID: "", At: ms(math.MinInt64)},
			{Channel: "sms", OfferID: "日本語", At: ms(-1)},
			{Channel: "sms", OfferID: "same time, kept in order", At: ms(-1)},
			{Channel: "push", At: ms(1741608000123)},
			{OfferID: "only offer", At: ms(math.MaxInt64)},
		},
		LastPurchases: map[string]time.Time{"": ms(0), "phones": ms(1741608000000), "far": ms(math.MaxInt64)},
	}
}

// equalProfiles compares decoded profiles: reflect.DeepEqual, except that a
// nil and an empty slice or map are the same (the encoding cannot tell them
// apart) and a NaN purchase value equals itself when the bits are equal.
func equalProfiles(a, b *profile.Profile) bool {
	na, nb := normalize(a), normalize(b)
	if math.Float64bits(na.PurchaseValue) != math.Float64bits(nb.PurchaseValue) && na.PurchaseValue != nb.PurchaseValue {
		return false
	}
	na.PurchaseValue, nb.PurchaseValue = 0, 0
	return reflect.DeepEqual(na, nb)
}

func normalize(p *profile.Profile) profile.Profile {
	n := *p
	if len(n.Series) == 0 {
		n.Series = nil
	}
	// A NaN bucket value (the codec keeps any bits) never equals itself:
	// compare its bits instead.
	n.Series = slices.Clone(n.Series)
	for i := range n.Series {
		s := &n.Series[i]
		s.Minutes, s.Hours, s.Days = nanBits(s.Minutes), nanBits(s.Hours), nanBits(s.Days)
	}
	if len(n.Totals) == 0 {
		n.Totals = nil
	}
	if len(n.LastSeen) == 0 {
		n.LastSeen = nil
	}
	if len(n.Consent) == 0 {
		n.Consent = nil
	}
	if len(n.Attributes) == 0 {
		n.Attributes = nil
	}
	if len(n.Seen) == 0 {
		n.Seen = nil
	}
	if len(n.Fired) == 0 {
		n.Fired = nil
	}
	if len(n.SendLog) == 0 {
		n.SendLog = nil
	}
	if len(n.LastPurchases) == 0 {
		n.LastPurchases = nil
	}
	return n
}

// nanBits returns bs with NaN values replaced by their bits (as a
// number), so that reflect.DeepEqual compares them.
func nanBits(bs []profile.Bucket) []profile.Bucket {
	if !slices.ContainsFunc(bs, func(b profile.Bucket) bool { return math.IsNaN(b.Value) }) {
		return bs
	}
	bs = slices.Clone(bs)
	for i := range bs {
		if math.IsNaN(bs[i].Value) {
			bs[i].Value = float64(math.Float64bits(bs[i].Value))
		}
	}
	return bs
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		p    *profile.Profile
	}{
		{"empty", &profile.Profile{}},
		{"applied events", appliedProfile(t)},
		{"edge values", edgeProfile()},
		{"only seen ids", &profile.Profile{Seen: []profile.SeenDay{{Day: 50, Hashes: []uint64{2}}, {Day: 100, Hashes: []uint64{1, 3}}}}},
		{"NaN purchase value", &profile.Profile{PurchaseValue: math.NaN()}},
		{"infinite purchase value", &profile.Profile{PurchaseValue: math.Inf(-1)}},
		{"only sends", &profile.Profile{SendLog: []profile.Send{{Channel: "sms", At: ms(5)}, {OfferID: "o", At: ms(6)}}}},
		{"only last purchases", &profile.Profile{LastPurchases: map[string]time.Time{"phones": ms(5)}}},
		{"exposures and conversions", &profile.Profile{
			Exposures: []profile.Exposure{
				{Campaign: "coupon", Variant: profile.Treated, At: ms(1741608000123), Converted: true},
				{Campaign: "日本語", Variant: profile.Control, At: ms(-5)},
			},
			Conversions: []profile.Conversion{{At: ms(1), Value: 0}, {At: ms(1741608000123), Value: 19.99}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := profile.Encode(tt.p)
			got, err := profile.Decode(b)
			if err != nil {
				t.Fatalf("Decode(Encode(p)) = %v", err)
			}
			if !equalProfiles(got, tt.p) {
				t.Errorf("round trip mismatch:\n got %+v\nwant %+v", got, tt.p)
			}
			if !math.IsNaN(tt.p.PurchaseValue) && !reflect.DeepEqual(got, tt.p) {
				// Stricter than equalProfiles: a profile built with nil
				// maps and slices decodes to exactly itself.
				t.Errorf("round trip not DeepEqual:\n got %#v\nwant %#v", got, tt.p)
			}
			if again := profile.Encode(got); !bytes.Equal(again, b) {
				t.Errorf("re-encoding the decoded profile changed the bytes")
			}
		})
	}
}

func TestEncodeKeepsMillisecondsUTC(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	in := time.Date(2025, 3, 10, 13, 0, 0, 1_999_999, paris) // 12:00:00.001999999 UTC
	want := time.Date(2025, 3, 10, 12, 0, 0, 1_000_000, time.UTC)
	p := &profile.Profile{
		UpdatedAt: in,
		LastSeen:  map[string]time.Time{"view": in},
		Consent:   map[string]profile.ConsentState{"sms": {Granted: true, At: in}},
		Fired:     map[string]time.Time{"k": in},

		SendLog:       []profile.Send{{Channel: "sms", At: in}},
		LastPurchases: map[string]time.Time{"phones": in},
	}
	got, err := profile.Decode(profile.Encode(p))
	if err != nil {
		t.Fatal(err)
	}
	for name, at := range map[string]time.Time{
		"UpdatedAt":     got.UpdatedAt,
		"LastSeen":      got.LastSeen["view"],
		"Consent":       got.Consent["sms"].At,
		"Fired":         got.Fired["k"],
		"SendLog":       got.SendLog[0].At,
		"LastPurchases": got.LastPurchases["phones"],
	} {
		// == and not Equal: the location must be UTC too.
		if at != want {
			t.Errorf("%s = %v (%v), want %v", name, at, at.Location(), want)
		}
	}
}

func TestEncodeDeterministic(t *testing.T) {
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%02d", i)
	}
	build := func(order []string) *profile.Profile {
		p := &profile.Profile{
			Totals: map[string]uint64{}, LastSeen: map[string]time.Time{}, Consent: map[string]profile.ConsentState{},
			Attributes: map[string]profile.Attribute{}, Fired: map[string]time.Time{},
			LastPurchases: map[string]time.Time{},
		}
		for _, k := range order {
			p.LastPurchases[k] = ms(int64(len(k)) * 3)
			p.Totals[k] = uint64(len(k))
			p.LastSeen[k] = ms(int64(len(k)) * 1000)
			p.Consent[k] = profile.ConsentState{Granted: len(k)%2 == 0, At: ms(7)}
			p.Attributes[k] = profile.Attribute{Value: k + "-value", At: ms(11)}
			p.Fired[k] = ms(9)
		}
		return p
	}
	forward := build(keys)
	reversed := slices.Clone(keys)
	slices.Reverse(reversed)
	backward := build(reversed)
	want := profile.Encode(forward)
	if got := profile.Encode(backward); !bytes.Equal(got, want) {
		t.Errorf("profiles with maps filled in different orders encode differently")
	}
	for i := range 50 {
		if got := profile.Encode(forward); !bytes.Equal(got, want) {
			t.Fatalf("encoding %d of the same profile differs", i)
		}
	}
	p := appliedProfile(t)
	first := profile.Encode(p)
	for i := range 50 {
		if got := profile.Encode(appliedProfile(t)); !bytes.Equal(got, first) {
			t.Fatalf("encoding %d of an equal profile differs", i)
		}
	}
}

// Wire-format builders for hand-made (mostly corrupt) encodings.

func bytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func varintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// packedMinutes encodes (minute, count) pairs the way Encode does: minute
// deltas zig-zagged, counts plain.
func packedMinutes(pairs ...int64) []byte {
	var b []byte
	prev := int64(0)
	for i := 0; i+1 < len(pairs); i += 2 {
		b = protowire.AppendVarint(b, protowire.EncodeZigZag(pairs[i]-prev))
		b = protowire.AppendVarint(b, uint64(pairs[i+1]))
		prev = pairs[i]
	}
	return b
}

func seriesMsg(typ, category string, packed []byte) []byte {
	var m []byte
	m = bytesField(m, 1, []byte(typ))
	m = bytesField(m, 2, []byte(category))
	return bytesField(m, 3, packed)
}

func sendMsg(channel, offer string, atMs int64) []byte {
	var m []byte
	m = bytesField(m, 1, []byte(channel))
	m = bytesField(m, 2, []byte(offer))
	return varintField(m, 3, protowire.EncodeZigZag(atMs))
}

func stored(fields ...[]byte) []byte {
	return slices.Concat(append([][]byte{{0x01}}, fields...)...)
}

func TestDecodeCorrupt(t *testing.T) {
	valid := profile.Encode(appliedProfile(t))
	eightBytes := protowire.AppendFixed64(nil, 1)
	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version zero", append([]byte{0x00}, valid[1:]...)},
		{"version two", append([]byte{0x02}, valid[1:]...)},
		{"truncated last field", valid[:len(valid)-1]},
		{"truncated tag", stored([]byte{0x80})},
		{"truncated varint", stored([]byte{0x08, 0xff})},
		{"length past the end", stored(protowire.AppendTag(nil, fTotals, protowire.BytesType), []byte{0x05, 0x0a})},
		{"field number zero", stored([]byte{0x00, 0x01})},
		{"reserved wire type", stored(protowire.AppendTag(nil, 20, 6), []byte{0x01})},
		{"end group without start", stored(protowire.AppendTag(nil, 20, protowire.EndGroupType))},
		{"unterminated group", stored(protowire.AppendTag(nil, 20, protowire.StartGroupType), varintField(nil, 1, 1))},
		{"series out of order", stored(
			bytesField(nil, fSeries, seriesMsg("view", "b", packedMinutes(10, 1))),
			bytesField(nil, fSeries, seriesMsg("view", "a", packedMinutes(10, 1))),
		)},
		{"series types out of order", stored(
			bytesField(nil, fSeries, seriesMsg("view", "", packedMinutes(10, 1))),
			bytesField(nil, fSeries, seriesMsg("click", "", packedMinutes(10, 1))),
		)},
		{"duplicate series", stored(
			bytesField(nil, fSeries, seriesMsg("view", "a", packedMinutes(10, 1))),
			bytesField(nil, fSeries, seriesMsg("view", "a", packedMinutes(11, 1))),
		)},
		{"minutes out of order", stored(bytesField(nil, fSeries, seriesMsg("view", "", packedMinutes(10, 1, 5, 1))))},
		{"duplicate minute", stored(bytesField(nil, fSeries, seriesMsg("view", "", packedMinutes(10, 1, 10, 1))))},
		{"series without minutes", stored(bytesField(nil, fSeries, bytesField(nil, 1, []byte("view"))))},
		{"series with empty minutes", stored(bytesField(nil, fSeries, seriesMsg("view", "", nil)))},
		{"count over 32 bits", stored(bytesField(nil, fSeries, seriesMsg("view", "", packedMinutes(10, 1<<32))))},
		{"minute without count", stored(bytesField(nil, fSeries, seriesMsg("view", "", protowire.AppendVarint(nil, 20))))},
		{"truncated minute varint", stored(bytesField(nil, fSeries, seriesMsg("view", "", []byte{0x80})))},
		{"garbage series message", stored(bytesField(nil, fSeries, []byte{0xff}))},
		{"seen hashes not a multiple of 8", stored(bytesField(nil, fSeenHashes, make([]byte, 7)))},
		{"seen hashes without times", stored(bytesField(nil, fSeenHashes, eightBytes))},
		{"seen times without hashes", stored(bytesField(nil, fSeenAt, protowire.AppendVarint(nil, 2)))},
		{"more seen times than hashes", stored(
			bytesField(nil, fSeenHashes, eightBytes),
			bytesField(nil, fSeenAt, []byte{0x02, 0x02}),
		)},
		{"truncated seen time", stored(bytesField(nil, fSeenHashes, eightBytes), bytesField(nil, fSeenAt, []byte{0x80}))},
		{"garbage totals message", stored(bytesField(nil, fTotals, []byte{0xff}))},
		{"garbage last seen message", stored(bytesField(nil, fLastSeen, []byte{0x0a, 0x09}))},
		{"garbage consent message", stored(bytesField(nil, fConsent, []byte{0x10}))},
		{"garbage attributes message", stored(bytesField(nil, fAttributes, []byte{0x12, 0x01}))},
		{"garbage fired message", stored(bytesField(nil, fFired, []byte{0x00}))},
		{"garbage sends message", stored(bytesField(nil, fSends, []byte{0x1a, 0x05}))},
		{"garbage last purchases message", stored(bytesField(nil, fLastPurchases, []byte{0x10, 0xff}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := profile.Decode(tt.in)
			if !errors.Is(err, profile.ErrCorrupt) {
				t.Fatalf("Decode(%x) = %+v, %v; want an error wrapping ErrCorrupt", tt.in, p, err)
			}
			if p != nil {
				t.Errorf("Decode returned a profile with its error: %+v", p)
			}
		})
	}
}

// TestDecodeSplitPackedMinutes: protobuf lets a packed field be split over
// several occurrences. Whatever Decode makes of a series whose minutes come
// in two occurrences of field 3, it must not return minutes out of order or
// repeated: Count and ApplyEvent rely on the order, and Decode itself
// rejects the profile once re-encoded.
func TestDecodeSplitPackedMinutes(t *testing.T) {
	tests := []struct {
		name   string
		chunks [][]int64 // (minute, count) pairs per occurrence, deltas from 0
	}{
		{"second occurrence lower", [][]int64{{10, 1}, {5, 1}}},
		{"second occurrence equal", [][]int64{{10, 1}, {10, 1}}},
		{"second occurrence higher", [][]int64{{10, 1}, {20, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var msg []byte
			msg = bytesField(msg, 1, []byte("view"))
			for _, c := range tt.chunks {
				msg = bytesField(msg, 3, packedMinutes(c...))
			}
			p, err := profile.Decode(stored(bytesField(nil, fSeries, msg)))
			if err != nil {
				if !errors.Is(err, profile.ErrCorrupt) {
					t.Errorf("Decode error %v does not wrap ErrCorrupt", err)
				}
				return
			}
			ms := p.Series[0].Minutes
			for i := 1; i < len(ms); i++ {
				if ms[i-1].At >= ms[i].At {
					t.Fatalf("Decode accepted minutes out of order: %+v", ms)
				}
			}
			if _, err := profile.Decode(profile.Encode(p)); err != nil {
				t.Errorf("Decode(Encode(p)) = %v", err)
			}
		})
	}
}

// TestDecodeEveryPrefix: any prefix of a valid encoding either decodes or
// fails with ErrCorrupt; nothing panics or fails otherwise.
func TestDecodeEveryPrefix(t *testing.T) {
	for _, p := range []*profile.Profile{appliedProfile(t), edgeProfile()} {
		b := profile.Encode(p)
		for n := range len(b) {
			got, err := profile.Decode(b[:n])
			if err != nil && !errors.Is(err, profile.ErrCorrupt) {
				t.Errorf("Decode(prefix %d of %d): error %v does not wrap ErrCorrupt", n, len(b), err)
			}
			if err == nil && got == nil {
				t.Errorf("Decode(prefix %d of %d) = nil, nil", n, len(b))
			}
		}
	}
}

func TestDecodeSkipsUnknownFields(t *testing.T) {
	unknownTop := func() []byte {
		var b []byte
		b = varintField(b, 100, 12345)
		b = protowire.AppendTag(b, 101, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, 0xdeadbeef)
		b = protowire.AppendTag(b, 102, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.MaxUint64)
		b = bytesField(b, 103, []byte("a field from the future"))
		b = protowire.AppendTag(b, 104, protowire.StartGroupType)
		b = varintField(b, 1, 1)
		b = bytesField(b, 2, []byte("in a group"))
		b = protowire.AppendTag(b, 104, protowire.EndGroupType)
		b = bytesField(b, 1<<28, nil) // the largest field number
		return b
	}()

	t.Run("appended", func(t *testing.T) {
		p := appliedProfile(t)
		b := append(profile.Encode(p), unknownTop...)
		got, err := profile.Decode(b)
		if err != nil {
			t.Fatalf("Decode = %v", err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("got %+v\nwant %+v", got, p)
		}
	})

	t.Run("before the known fields", func(t *testing.T) {
		p := edgeProfile()
		enc := profile.Encode(p)
		b := slices.Concat(enc[:1], unknownTop, enc[1:])
		got, err := profile.Decode(b)
		if err != nil {
			t.Fatalf("Decode = %v", err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("got %+v\nwant %+v", got, p)
		}
	})

	t.Run("inside nested messages", func(t *testing.T) {
		extra := slices.Concat(varintField(nil, 9, 1), bytesField(nil, 10, []byte("x")))
		pair := func(k string, v uint64) []byte {
			return slices.Concat(bytesField(nil, 1, []byte(k)), extra, varintField(nil, 2, v))
		}
		b := stored(
			varintField(nil, fVersion, 3),
			bytesField(nil, fSeries, slices.Concat(extra, seriesMsg("view", "a", packedMinutes(100, 2, 101, 1)), extra)),
			bytesField(nil, fTotals, pair("view", 3)),
			bytesField(nil, fLastSeen, pair("view", protowire.EncodeZigZag(6060000))),
			bytesField(nil, fConsent, slices.Concat(bytesField(nil, 1, []byte("sms")), extra,
				varintField(nil, 2, 1), varintField(nil, 3, protowire.EncodeZigZag(-2000)))),
			bytesField(nil, fAttributes, slices.Concat(bytesField(nil, 1, []byte("tz")), extra, bytesField(nil, 2, []byte("UTC")))),
			bytesField(nil, fFired, pair("k", protowire.EncodeZigZag(5))),
			bytesField(nil, fSends, slices.Concat(bytesField(nil, 1, []byte("sms")), extra, bytesField(nil, 2, []byte("o")),
				varintField(nil, 3, protowire.EncodeZigZag(8000)))),
			bytesField(nil, fLastPurchases, pair("phones", protowire.EncodeZigZag(7000))),
		)
		want := &profile.Profile{
			Version: 3,
			// Stored before the tiers: the minutes fill the hours and days.
			Series: []profile.Series{{Type: "view", Category: "a",
				Minutes: []profile.Bucket{{At: 100, Count: 2}, {At: 101, Count: 1}},
				Hours:   []profile.Bucket{{At: 1, Count: 3}},
				Days:    []profile.Bucket{{At: 0, Count: 3}}}},
			Totals:     map[string]uint64{"view": 3},
			LastSeen:   map[string]time.Time{"view": ms(6060000)},
			Consent:    map[string]profile.ConsentState{"sms": {Granted: true, At: ms(-2000)}},
			Attributes: map[string]profile.Attribute{"tz": {Value: "UTC"}},
			Fired:      map[string]time.Time{"k": ms(5)},

			SendLog:       []profile.Send{{Channel: "sms", OfferID: "o", At: ms(8000)}},
			LastPurchases: map[string]time.Time{"phones": ms(7000)},
		}
		got, err := profile.Decode(b)
		if err != nil {
			t.Fatalf("Decode = %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
		if enc := profile.Encode(want); !bytes.Equal(profile.Encode(got), enc) {
			t.Errorf("re-encoding does not drop the unknown fields")
		}
	})
}

// TestDecodeSortsSends: Sends and LastSent rely on the send log being
// oldest first; a stored log out of order (written by a future or buggy
// writer) is put in order, ties kept in stored order.
func TestDecodeSortsSends(t *testing.T) {
	b := stored(
		bytesField(nil, fSends, sendMsg("sms", "late", 9000)),
		bytesField(nil, fSends, sendMsg("push", "a", 5000)),
		bytesField(nil, fSends, sendMsg("push", "b", 5000)),
	)
	p, err := profile.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []profile.Send{{"push", "a", ms(5000)}, {"push", "b", ms(5000)}, {"sms", "late", ms(9000)}}
	if !reflect.DeepEqual(p.SendLog, want) {
		t.Errorf("sends = %+v, want %+v", p.SendLog, want)
	}
	if at, ok := p.LastSent("late"); !ok || !at.Equal(ms(9000)) {
		t.Errorf("LastSent(late) = %v, %v", at, ok)
	}
}

func FuzzDecode(f *testing.F) {
	for _, p := range []*profile.Profile{{}, appliedProfile(f), edgeProfile(), benchProfile()} {
		f.Add(profile.Encode(p))
	}
	for _, junk := range [][]byte{
		nil, {0x00}, {0x01}, {0x02}, {0x01, 0xff}, {0x01, 0x08}, {0x01, 0x1a, 0x00},
		[]byte("\x01garbage that is not a profile"),
		stored(bytesField(nil, fSeenHashes, nil)),
		stored(bytesField(nil, fSeries, seriesMsg("view", "", packedMinutes(10, 1, 5, 1)))),
		stored(protowire.AppendTag(nil, 104, protowire.StartGroupType), protowire.AppendTag(nil, 104, protowire.EndGroupType)),
		stored(bytesField(nil, fSends, sendMsg("sms", "o", 9000)), bytesField(nil, fSends, sendMsg("push", "", 5000))),
		stored(bytesField(nil, fSends, nil), bytesField(nil, fLastPurchases, nil)),
		stored(bytesField(nil, fLastPurchases, slices.Concat(bytesField(nil, 1, []byte("phones")), varintField(nil, 2, 3)))),
	} {
		f.Add(junk)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := profile.Decode(data)
		if err != nil {
			if !errors.Is(err, profile.ErrCorrupt) {
				t.Fatalf("Decode error %v does not wrap ErrCorrupt", err)
			}
			if p != nil {
				t.Fatalf("Decode returned a profile with its error")
			}
			return
		}
		for i := 1; i < len(p.SendLog); i++ {
			if p.SendLog[i-1].At.After(p.SendLog[i].At) {
				t.Fatalf("sends not oldest first: %+v", p.SendLog)
			}
		}
		for i, s := range p.Series {
			if len(s.Minutes)+len(s.Hours)+len(s.Days) == 0 {
				t.Fatalf("series %d has no buckets", i)
			}
			for tier := profile.TierMinute; tier <= profile.TierDay; tier++ {
				bs := s.Buckets(tier)
				for j := 1; j < len(bs); j++ {
					if bs[j-1].At >= bs[j].At {
						t.Fatalf("series %d: %s buckets not strictly ascending: %+v", i, tier, bs)
					}
				}
			}
		}
		b := profile.Encode(p)
		q, err := profile.Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(data))) = %v", err)
		}
		if !equalProfiles(p, q) {
			t.Fatalf("re-encoded profile decodes differently:\n got %+v\nwant %+v", q, p)
		}
		if b2 := profile.Encode(q); !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable across a round trip")
		}
	})
}

// benchProfile is a typical profile: 10 series of 30 minutes (and their
// hours and day), 500 seen ids, a few totals, consent and cooldown marks.
func benchProfile() *profile.Profile {
	base := t0.Unix() / 60
	p := &profile.Profile{
		Version:       1234,
		UpdatedAt:     t0,
		Totals:        map[string]uint64{},
		LastSeen:      map[string]time.Time{},
		PurchaseCount: 4,
		PurchaseValue: 199.96,
		Consent:       map[string]profile.ConsentState{"sms": {Granted: false, At: t0.Add(-time.Hour)}},
		Attributes:    map[string]profile.Attribute{"tz": {Value: "Europe/Paris", At: t0.Add(-time.Hour)}},
		Fired:         map[string]time.Time{"welcome": t0.Add(-48 * time.Hour), "cart": t0.Add(-time.Hour)},
	}
	for i := range 10 {
		s := profile.Series{Type: fmt.Sprintf("type-%d", i/3), Category: fmt.Sprintf("category-%d", i)}
		for m := range 30 {
			at := base - 60 + int64(2*m)
			n := uint32(1 + m%4)
			s.Minutes = append(s.Minutes, profile.Bucket{At: at, Count: n})
			if h := at / 60; len(s.Hours) == 0 || s.Hours[len(s.Hours)-1].At != h {
				s.Hours = append(s.Hours, profile.Bucket{At: h})
			}
			s.Hours[len(s.Hours)-1].Count += n
		}
		s.Days = []profile.Bucket{{At: base / 1440, Count: 60}}
		p.Series = append(p.Series, s)
		p.Totals[s.Type] += 60
		p.LastSeen[s.Type] = t0
	}
	day := profile.SeenDay{Day: base / 1440}
	for i := range 500 {
		day.Hashes = append(day.Hashes, profile.HashEventID(fmt.Sprintf("event-%d", i)))
	}
	slices.Sort(day.Hashes)
	p.Seen = []profile.SeenDay{day}
	return p
}

func BenchmarkEncode(b *testing.B) {
	p := benchProfile()
	b.SetBytes(int64(len(profile.Encode(p))))
	b.ReportAllocs()
	for b.Loop() {
		profile.Encode(p)
	}
}

func BenchmarkDecode(b *testing.B) {
	enc := profile.Encode(benchProfile())
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := profile.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyEvent is the pure profile update of one event (dedup,
// event-time bucket, totals) on the typical profile of BenchmarkEncode,
// followed by Compact, as a step does per batch. The one allocation per
// op is the benchmark's own event id. The profile is rebuilt every 1,000
// events (untimed), before its day of ids fills up (Limits.DedupMax).
func BenchmarkApplyEvent(b *testing.B) {
	p := benchProfile()
	now := p.UpdatedAt
	l := profile.Limits{}.WithDefaults()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%1000 == 999 {
			b.StopTimer()
			p = benchProfile()
			b.StartTimer()
		}
		e := profile.Event{ID: fmt.Sprintf("bench-%d", i), UserID: "u", Type: "view", Category: "phones", OccurredAt: now.Add(-time.Minute)}
		if r := p.ApplyEvent(&e, now, l); r.Status != profile.Applied {
			b.Fatalf("event %d: %v", i, r.Status)
		}
		p.Compact(now, l)
		i++
	}
}
