package profile

import (
	"slices"
	"sort"
	"strconv"
	"time"
)

// Event is one user event, as the pure model sees it.
type Event struct {
	ID         string
	UserID     string
	Type       string
	OccurredAt time.Time
	Category   string
	ItemID     string
	Value      float64
	Channel    string
	Attributes map[string]string
}

// Status is the outcome of applying one event.
type Status int

const (
	// Applied means the event changed the profile.
	Applied Status = iota + 1
	// Duplicate means the event id was seen before; nothing changed.
	Duplicate
	// Rejected means the event was refused (see the result's Reason).
	Rejected
)

func (s Status) String() string {
	switch s {
	case Applied:
		return "applied"
	case Duplicate:
		return "duplicate"
	case Rejected:
		return "rejected"
	}
	return "unknown"
}

// Result is the outcome of one event.
type Result struct {
	Status Status
	Reason string
	// Code classifies a rejection for metrics, from a small fixed set
	// (RejectTooOld, RejectTooNew); empty otherwise.
	Code string
}

// Rejection codes of Result.Code.
const (
	RejectTooOld = "too_old"
	RejectTooNew = "too_new"
	// RejectDedupHorizon: the profile could not deduplicate the event
	// (dedup.go).
	RejectDedupHorizon = "dedup_horizon"
)

// Event types with a meaning of their own in the model. Every other type is
// only counted.
const (
	TypePurchase    = "purchase"
	TypeSubscribe   = "subscribe"
	TypeUnsubscribe = "unsubscribe"
	// TypeMessageSent reports a message sent to the user: its channel is
	// the event's channel, its offer the attribute AttrOfferID (if any).
	// Each one is kept as a Send, for frequency caps and offer cooldowns.
	TypeMessageSent = "message_sent"
)

// AttrOfferID is the attribute of a message_sent event naming the offer
// that was sent.
const AttrOfferID = "offer_id"

// AllChannels is the consent key of a subscribe/unsubscribe event for every
// channel (an event with an empty channel or channel "all").
const AllChannels = "*"

// RememberedAttributes are the event attributes the profile keeps (latest by
// event time wins).
var rememberedAttributes = [...]string{"tz"}

// Limits bound what a profile remembers. The zero value of a field means its
// default. The yaml names are the keys of nudged's profile settings.
type Limits struct {
	// Retention is how far back events are accepted, counted (per day)
	// and deduplicated, and so the longest window a rule can ask for.
	// Events older than now-Retention are rejected. Default 90 days
	// (2160h).
	Retention time.Duration `yaml:"retention"`
	// MinuteSpan is how long events are counted per minute. Default 25h:
	// a window of up to 24 hours is read per minute even when judged at
	// the time of an event that arrives up to an hour late. It is at most
	// HourSpan (WithDefaults cuts it).
	MinuteSpan time.Duration `yaml:"minute_span"`
	// HourSpan is how long events are counted per hour. Default 8 days
	// (192h): 7-day windows per hour, with a day of margin likewise. It
	// is at most Retention (WithDefaults cuts it).
	HourSpan time.Duration `yaml:"hour_span"`
	// MaxFuture is how far ahead of the server clock an event may be.
	// Default 5m.
	MaxFuture time.Duration `yaml:"max_future"`
	// DedupWindow is ignored: event ids are remembered as long as their
	// events can be accepted (Retention). The key is still read so that
	// older configuration files load.
	//
	// Deprecated: ids are kept for the retention (dedup.go).
	DedupWindow time.Duration `yaml:"dedup_window"`
	// DedupMax is the most event ids remembered per user; past it the
	// oldest days of ids are forgotten and their events rejected from
	// then on (see dedup.go). Default 4096.
	DedupMax int `yaml:"dedup_max"`
	// MaxSeries is the most (type, category) series kept per user; the
	// series whose latest event (by event time) is oldest is dropped first.
	// Default 256.
	MaxSeries int `yaml:"max_series"`
	// FiredRetention is how long trigger cooldown marks are kept. Cooldowns
	// longer than this are capped to it. Default 30 days.
	FiredRetention time.Duration `yaml:"fired_retention"`
	// MaxFired is the most trigger cooldown marks kept per user. Default 256.
	MaxFired int `yaml:"max_fired"`
	// SendRetention is how long (by event time, measured from the
	// processing time of the last change) message_sent records and the
	// last purchase time per category are kept: the longest frequency-cap
	// period, offer cooldown or purchase cooldown that sees everything.
	// It is independent of Retention, because caps such as "5 push per 7
	// days" need a week of sends. Default 30 days.
	SendRetention time.Duration `yaml:"send_retention"`
	// MaxSends is the most message_sent records kept per user; the oldest
	// (by event time) are dropped first. Default 512.
	MaxSends int `yaml:"max_sends"`
	// MaxPurchaseCategories is the most categories whose last purchase
	// time is kept per user; the least recently bought are dropped first.
	// Default 256.
	MaxPurchaseCategories int `yaml:"max_purchase_categories"`
	// MaxTimers is the most pending timers (journey steps and deferred
	// actions) per user; a step that would schedule more is dropped and
	// counted. Default 64.
	MaxTimers int `yaml:"max_timers"`
	// MaxExposures is the most attribution windows (campaigns the user
	// was exposed to and may still convert on) kept per user; the oldest
	// are forgotten first. Default 64.
	MaxExposures int `yaml:"max_exposures"`
	// MaxConversions is the most recent conversion events kept per user,
	// for the exposures recorded after them. Default 16.
	MaxConversions int `yaml:"max_conversions"`
}

// DefaultLimits returns the limits a profile is kept under when told
// nothing: events accepted, counted and deduplicated for 90 days, per
// minute for 25 hours and per hour for 8 days, at most 4,096 event ids.
func DefaultLimits() Limits {
	return Limits{
		Retention:             90 * 24 * time.Hour,
		MinuteSpan:            25 * time.Hour,
		HourSpan:              8 * 24 * time.Hour,
		MaxFuture:             5 * time.Minute,
		DedupMax:              4096,
		MaxSeries:             256,
		FiredRetention:        30 * 24 * time.Hour,
		MaxFired:              256,
		SendRetention:         30 * 24 * time.Hour,
		MaxSends:              512,
		MaxPurchaseCategories: 256,
		MaxTimers:             64,
		MaxExposures:          64,
		MaxConversions:        16,
	}
}

// WithDefaults returns l with every zero (or negative) field set to its
// default (DefaultLimits), and the spans cut so that MinuteSpan <=
// HourSpan <= Retention.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	orDefault(&l.Retention, d.Retention)
	orDefault(&l.MinuteSpan, d.MinuteSpan)
	orDefault(&l.HourSpan, d.HourSpan)
	l.HourSpan = min(l.HourSpan, l.Retention)
	l.MinuteSpan = min(l.MinuteSpan, l.HourSpan)
	orDefault(&l.MaxFuture, d.MaxFuture)
	orDefault(&l.DedupMax, d.DedupMax)
	orDefault(&l.MaxSeries, d.MaxSeries)
	orDefault(&l.FiredRetention, d.FiredRetention)
	orDefault(&l.MaxFired, d.MaxFired)
	orDefault(&l.SendRetention, d.SendRetention)
	orDefault(&l.MaxSends, d.MaxSends)
	orDefault(&l.MaxPurchaseCategories, d.MaxPurchaseCategories)
	orDefault(&l.MaxTimers, d.MaxTimers)
	orDefault(&l.MaxExposures, d.MaxExposures)
	orDefault(&l.MaxConversions, d.MaxConversions)
	return l
}

// orDefault sets *p to d when it is not positive.
func orDefault[T int | time.Duration](p *T, d T) {
	if *p <= 0 {
		*p = d
	}
}

// Profile is what nudge knows about one user. The zero value is an empty
// profile. A Profile is not safe for concurrent use.
type Profile struct {
	// Version is incremented by every committed change.
	Version uint64
	// UpdatedAt is the processing time of the last change.
	UpdatedAt time.Time
	// Series holds event-time counts per (type, category), sorted by key
	// (tiers.go).
	Series []Series
	// MinuteFrom and HourFrom are the first Unix minute and hour from
	// which the minute and hour tiers hold every event applied (tiers.go);
	// before them a window is read from a coarser tier.
	MinuteFrom, HourFrom int64
	// Totals are all-time counts per event type.
	Totals map[string]uint64
	// LastSeen is the latest event time per event type.
	LastSeen map[string]time.Time
	// PurchaseCount and PurchaseValue sum purchase events.
	PurchaseCount uint64
	PurchaseValue float64
	// Consent per channel (AllChannels for every channel): the most recent
	// subscribe/unsubscribe by event time.
	Consent map[string]ConsentState
	// Attributes remembered from events (see rememberedAttributes).
	Attributes map[string]Attribute
	// Seen are the hashes of the ids of the events applied, by UTC day of
	// event time, oldest first (dedup.go).
	Seen []SeenDay
	// DedupFloor is the first UTC day (days since the Unix epoch) whose
	// events the profile accepts: it forgot the ids of earlier days to
	// stay within Limits.DedupMax. 0: no floor.
	DedupFloor int64
	// Fired is the event time at which each trigger cooldown key last fired.
	Fired map[string]time.Time
	// SendLog records the applied message_sent events, sorted by event
	// time, oldest first (ties in the order applied). See Sends and
	// LastSent.
	SendLog []Send
	// LastPurchases is the latest event time of a purchase per category
	// (purchases without a category are not kept here). See LastPurchase.
	LastPurchases map[string]time.Time
	// Reservations are the live decisions taken with reserve (see
	// Reservation), oldest first.
	Reservations []Reservation
	// Timers are the pending journey steps and deferred actions, by Wake,
	// earliest first (see Timer).
	Timers []Timer
	// Exposures are the user's attribution windows, one per campaign
	// (see Expose); Conversions the recent conversion events, by event
	// time, oldest first (see Convert).
	Exposures   []Exposure
	Conversions []Conversion

	// UserID is the user the profile is about. It is not stored: the
	// store sets it on every profile it reads or creates.
	UserID string
}

// Send is one message sent to the user, from a message_sent event.
type Send struct {
	// Channel is the event's channel ("" if it had none).
	Channel string
	// OfferID is the event's offer_id attribute ("" if it had none).
	OfferID string
	// At is the event time.
	At time.Time
}

// Series counts the events of one (type, category) per bucket of event
// time, in three tiers (tiers.go). Each tier is sorted by At, ascending,
// without duplicates.
type Series struct {
	Type     string
	Category string
	Minutes  []Bucket
	Hours    []Bucket
	Days     []Bucket
}

// Attribute is a remembered event attribute: the value of the latest event
// (by event time) that carried it.
type Attribute struct {
	Value string
	At    time.Time
}

// ConsentState is a user's consent for one channel.
type ConsentState struct {
	Granted bool
	// At is the event time of the subscribe/unsubscribe event.
	At time.Time
}

// Count returns the number of events of the given type and category whose
// event time falls in the window ending at now, read from the finest tier
// that holds the whole window (tiers.go): every bucket from the one
// containing now-window to the one containing now, so at most one bucket
// (a minute, an hour or a day) more than the window. An empty category
// counts all categories.
func (p *Profile) Count(typ, category string, window time.Duration, now time.Time) int64 {
	var n int64
	p.window(typ, category, window, now, func(_ *Series, b *Bucket) { n += int64(b.Count) })
	return n
}

// Total returns the all-time count of events of a type.
func (p *Profile) Total(typ string) uint64 { return p.Totals[typ] }

// LastSeenAt returns the latest event time of a type, and false if there was
// none.
func (p *Profile) LastSeenAt(typ string) (time.Time, bool) {
	t, ok := p.LastSeen[typ]
	return t, ok
}

// Consented reports whether the user may be contacted on channel: the most
// recent (by event time) of the channel's and the global consent decides,
// and a user who never unsubscribed has consented.
func (p *Profile) Consented(channel string) bool {
	c, okc := p.Consent[channel]
	g, okg := p.Consent[AllChannels]
	switch {
	case okc && okg:
		if g.At.After(c.At) {
			return g.Granted
		}
		return c.Granted
	case okc:
		return c.Granted
	case okg:
		return g.Granted
	}
	return true
}

// Attr returns a remembered attribute, or "".
func (p *Profile) Attr(name string) string { return p.Attributes[name].Value }

// FiredAt returns when a trigger cooldown key last fired.
func (p *Profile) FiredAt(key string) (time.Time, bool) {
	t, ok := p.Fired[key]
	return t, ok
}

// MarkFired records that a trigger cooldown key fired at event time at
// (keeping the latest).
func (p *Profile) MarkFired(key string, at time.Time) {
	if p.Fired == nil {
		p.Fired = make(map[string]time.Time)
	}
	if old, ok := p.Fired[key]; !ok || at.After(old) {
		p.Fired[key] = at
	}
}

// Sends returns how many messages were sent on channel at or after since
// (event time; sends later than any "now" count too). An empty channel
// counts every channel. Only what Limits.SendRetention and Limits.MaxSends
// keep is seen.
func (p *Profile) Sends(channel string, since time.Time) int {
	n := 0
	for i := len(p.SendLog) - 1; i >= 0; i-- {
		s := &p.SendLog[i]
		if s.At.Before(since) {
			break
		}
		if channel == "" || s.Channel == channel {
			n++
		}
	}
	return n
}

// LastSent returns the event time of the latest message_sent event for the
// offer, and false if none is kept. An empty offer id is never found.
func (p *Profile) LastSent(offerID string) (time.Time, bool) {
	if offerID == "" {
		return time.Time{}, false
	}
	for i := len(p.SendLog) - 1; i >= 0; i-- {
		if p.SendLog[i].OfferID == offerID {
			return p.SendLog[i].At, true
		}
	}
	return time.Time{}, false
}

// LastPurchase returns the event time of the latest purchase in the
// category, and false if none is kept (see Limits.SendRetention).
func (p *Profile) LastPurchase(category string) (time.Time, bool) {
	t, ok := p.LastPurchases[category]
	return t, ok
}

// Check says whether an event can be applied at processing time now: it is
// rejected when older than the retention or too far in the future. Field
// validation (ids, type syntax) is the caller's job.
func (l Limits) Check(e *Event, now time.Time) (Result, bool) {
	switch {
	case e.OccurredAt.Before(now.Add(-l.Retention)):
		return Result{Status: Rejected, Code: RejectTooOld, Reason: "occurred_at " + e.OccurredAt.UTC().Format(time.RFC3339) +
			" is older than the retention of " + FormatDuration(l.Retention)}, false
	case e.OccurredAt.After(now.Add(l.MaxFuture)):
		return Result{Status: Rejected, Code: RejectTooNew, Reason: "occurred_at " + e.OccurredAt.UTC().Format(time.RFC3339) +
			" is more than " + l.MaxFuture.String() + " in the future"}, false
	}
	return Result{}, true
}

// ApplyEvent applies one event at processing time now. The limits must have
// their defaults set (WithDefaults). It does not prune: call Compact once
// after a batch of events.
func (p *Profile) ApplyEvent(e *Event, now time.Time, l Limits) Result {
	if r, ok := l.Check(e, now); !ok {
		return r
	}
	day := unixDay(e.OccurredAt)
	if day < p.DedupFloor {
		return Result{Status: Rejected, Code: RejectDedupHorizon, Reason: "occurred_at " + e.OccurredAt.UTC().Format(time.RFC3339) +
			" is before this profile's deduplication horizon " + time.Unix(p.DedupFloor*86400, 0).UTC().Format(time.DateOnly) +
			": it remembers at most " + strconv.Itoa(l.DedupMax) + " event ids (profile.dedup_max) and forgot older days', so it could not tell a re-sent event"}
	}
	if p.HasSeen(e.ID) {
		return Result{Status: Duplicate}
	}
	p.seenDay(day).remember(HashEventID(e.ID))
	p.advanceTiers(now, l)
	p.addCount(e.Type, e.Category, e.OccurredAt, e.Value)
	if p.Totals == nil {
		p.Totals = make(map[string]uint64)
	}
	p.Totals[e.Type]++
	if p.LastSeen == nil {
		p.LastSeen = make(map[string]time.Time)
	}
	if last, ok := p.LastSeen[e.Type]; !ok || e.OccurredAt.After(last) {
		p.LastSeen[e.Type] = e.OccurredAt
	}
	switch e.Type {
	case TypePurchase:
		p.PurchaseCount++
		p.PurchaseValue = saturate(p.PurchaseValue + e.Value)
		if e.Category != "" {
			if p.LastPurchases == nil {
				p.LastPurchases = make(map[string]time.Time)
			}
			if last, ok := p.LastPurchases[e.Category]; !ok || e.OccurredAt.After(last) {
				p.LastPurchases[e.Category] = e.OccurredAt
			}
		}
	case TypeMessageSent:
		p.addSend(Send{Channel: e.Channel, OfferID: e.Attributes[AttrOfferID], At: e.OccurredAt})
		p.confirmReservation(e.Attributes[AttrIdempotencyKey])
	case TypeSubscribe, TypeUnsubscribe:
		ch := e.Channel
		if ch == "" || ch == "all" {
			ch = AllChannels
		}
		if p.Consent == nil {
			p.Consent = make(map[string]ConsentState)
		}
		if old, ok := p.Consent[ch]; !ok || !e.OccurredAt.Before(old.At) {
			p.Consent[ch] = ConsentState{Granted: e.Type == TypeSubscribe, At: e.OccurredAt}
		}
	}
	for _, name := range rememberedAttributes {
		if v, ok := e.Attributes[name]; ok {
			if p.Attributes == nil {
				p.Attributes = make(map[string]Attribute)
			}
			if old, ok := p.Attributes[name]; !ok || !e.OccurredAt.Before(old.At) {
				p.Attributes[name] = Attribute{Value: v, At: e.OccurredAt}
			}
		}
	}
	return Result{Status: Applied}
}

// addSend inserts s in event-time order. Sends mostly arrive in order:
// search from the end.
func (p *Profile) addSend(s Send) {
	j := len(p.SendLog)
	for j > 0 && p.SendLog[j-1].At.After(s.At) {
		j--
	}
	p.SendLog = slices.Insert(p.SendLog, j, s)
}

// Compact forgets what the limits no longer require at processing time now:
// buckets past their tiers' spans, event ids of days no longer accepted,
// expired cooldown marks, sends and purchase times, and the least recently
// used series, marks, sends and purchase categories beyond their caps.
func (p *Profile) Compact(now time.Time, l Limits) {
	p.compactSeries(now, l)
	p.compactSeen(now, l)
	compactTimes(p.Fired, now.Add(-l.FiredRetention), l.MaxFired)
	p.compactSends(now, l)
	p.compactPurchases(now, l)
	p.compactReservations(now)
}

func (p *Profile) compactSends(now time.Time, l Limits) {
	horizon := now.Add(-l.SendRetention)
	k := 0
	for k < len(p.SendLog) && p.SendLog[k].At.Before(horizon) {
		k++
	}
	if n := len(p.SendLog) - k; n > l.MaxSends {
		k += n - l.MaxSends
	}
	if k > 0 {
		n := copy(p.SendLog, p.SendLog[k:])
		clear(p.SendLog[n:]) // release the strings
		p.SendLog = p.SendLog[:n]
	}
	if len(p.SendLog) == 0 {
		p.SendLog = nil
	}
}

func (p *Profile) compactPurchases(now time.Time, l Limits) {
	compactTimes(p.LastPurchases, now.Add(-l.SendRetention), l.MaxPurchaseCategories)
	if len(p.LastPurchases) == 0 {
		p.LastPurchases = nil
	}
}

// compactTimes drops the entries of m older than horizon, then all but the
// max latest (ties: the smaller key is kept), so that what a profile keeps
// does not depend on map order.
func compactTimes(m map[string]time.Time, horizon time.Time, max int) {
	for k, at := range m {
		if at.Before(horizon) {
			delete(m, k)
		}
	}
	if len(m) <= max {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if ta, tb := m[keys[a]], m[keys[b]]; !ta.Equal(tb) {
			return ta.After(tb)
		}
		return keys[a] < keys[b]
	})
	for _, k := range keys[max:] {
		delete(m, k)
	}
}

// MaxValueTotal is where a sum of event values (PurchaseValue) saturates,
// in either sign: the API bounds one value to ±1e12, and a sum past 1e15
// (where float64 still counts units exactly) says nothing more, while two
// values of 1.7e308 made the sum +Inf, which JSON cannot carry.
const MaxValueTotal = 1e15

// saturate clamps v to ±MaxValueTotal.
func saturate(v float64) float64 {
	return max(-MaxValueTotal, min(v, MaxValueTotal))
}

// FormatDuration writes d for people: days, hours, minutes, and seconds
// only below a minute (1d2h, 5h30m, 45s). It rounds to the second.
func FormatDuration(d time.Duration) string {
	var b []byte
	if d < 0 {
		b = append(b, '-')
		d = -d
	}
	d = d.Round(time.Second)
	if d < time.Minute {
		return string(strconv.AppendInt(b, int64(d/time.Second), 10)) + "s"
	}
	d = d.Round(time.Minute)
	for _, u := range [...]struct {
		size time.Duration
		unit byte
	}{{24 * time.Hour, 'd'}, {time.Hour, 'h'}, {time.Minute, 'm'}} {
		if n := d / u.size; n > 0 {
			b = strconv.AppendInt(b, int64(n), 10)
			b = append(b, u.unit)
			d -= n * u.size
		}
	}
	return string(b)
}
