package decision

import (
	"cmp"
	"math"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	_ "time/tzdata" // users' time zones must not depend on the host's zoneinfo

	"github.com/nudge-dm/nudge/profile"
)

// frequencyCap: at most max sends on channel ("" = every channel) per
// rolling period.
type frequencyCap struct {
	id         string
	channel    string // "": global
	max        int
	period     time.Duration
	periodText string // as written, for messages
	subject    string // for the trace
}

func (fc *frequencyCap) appliesTo(channel string) bool {
	return fc.channel == "" || fc.channel == channel
}

// used counts the slots of the cap taken at processing time now: the
// sends reported within its period, and the live reservations, which hold
// their slots until confirmed or expired.
func (fc *frequencyCap) used(p *profile.Profile, now time.Time) int {
	return p.Sends(fc.channel, now.Add(-fc.period)) + p.Reserved(fc.channel, now)
}

// quietHours: no SEND on channels between from and to, local time.
type quietHours struct {
	id       string
	channels channelSet
	from, to int // minutes since local midnight; from != to
	window   string
}

// purchaseCooldown: no offer of a category bought within period.
type purchaseCooldown struct {
	id         string
	period     time.Duration
	periodText string
}

// fallback is the literal offer for a channel when the profile cannot be
// read.
type fallback struct {
	offerID, template string
	payload           map[string]string
}

var clockPattern = regexp.MustCompile(`^([01][0-9]|2[0-3]):([0-5][0-9])$`)

// reservedRuleIDs name reasons that are not policies.
var reservedRuleIDs = []string{"consent", "fallback"}

func compileSettings(c *collector, raw *rawFile, r *Rules) {
	r.defaultTZ = time.UTC
	r.channelLimit = DefaultChannelLimit
	if cl := raw.channelLimit; cl.set {
		n, err := strconv.Atoi(cl.val)
		if err != nil || n < 0 {
			c.at(where{}, cl.line, "settings.max_actions_per_channel", "must be a whole number, 0 for no limit; got %q", cl.val)
		} else {
			r.channelLimit = n
		}
	}
	r.triggerHorizon = DefaultTriggerHorizon
	if th := raw.triggerHorizon; th.set {
		d, err := parseDuration(th.val)
		if err != nil || d <= 0 {
			c.at(where{}, th.line, "settings.trigger_horizon", "must be a positive duration (24h, 7d); got %q", th.val)
		} else {
			r.triggerHorizon = d
		}
	}
	switch m := raw.measure; {
	case !m.set || m.val == "true":
	case m.val == "false":
		r.noMeasure = true
	default:
		c.at(where{}, m.line, "settings.measure", "expected true or false, got %q", m.val)
	}
	tz := raw.defaultTZ
	if !tz.set {
		return
	}
	loc, err := loadConfigLocation(tz.val)
	if err != nil {
		c.at(where{}, tz.line, "settings.default_timezone", "%v", err)
		return
	}
	r.defaultTZ = loc
}

// DefaultChannelLimit is the most actions one event's triggers send on
// one channel when settings.max_actions_per_channel is not given: the
// trigger of highest priority (then first in the file) goes, the others
// are dropped and counted.
const DefaultChannelLimit = 1

// DefaultTriggerHorizon is how old an event may be and still be judged by
// the triggers when settings.trigger_horizon is not given: events are
// accepted back to the profile's retention (90 days), but a backfill of
// last month's export should count, not message people about last
// month.
const DefaultTriggerHorizon = 24 * time.Hour

// horizon is the trigger horizon (the default for a nil or unparsed
// Rules).
func (r *Rules) horizon() time.Duration {
	if r == nil || r.triggerHorizon <= 0 {
		return DefaultTriggerHorizon
	}
	return r.triggerHorizon
}

// loadConfigLocation loads a time zone named in the rules file.
func loadConfigLocation(name string) (*time.Location, error) {
	switch name {
	case "":
		return nil, errorString("must not be empty (omit it for UTC)")
	case "Local":
		return nil, errorString(`"Local" depends on the server: name an IANA time zone such as Europe/Paris`)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, errorString("unknown time zone " + strconv.Quote(name) + " (want an IANA name such as Europe/Paris or America/New_York)")
	}
	return loc, nil
}

type errorString string

func (e errorString) Error() string { return string(e) }

// checkDuration parses a duration field; positive says whether 0 is
// refused. ok is false after reporting a problem.
func checkDuration(c *collector, w where, field string, t text, line int, positive bool) (d time.Duration, ok bool) {
	if !t.set || t.val == "" {
		if positive {
			c.at(w, cmp.Or(t.line, line), field, "required (a duration such as 24h or 7d)")
			return 0, false
		}
		return 0, true
	}
	d, err := parseDuration(t.val)
	switch {
	case err != nil:
		c.at(w, t.line, field, "invalid duration %q (use Go durations such as 30m or 24h, or days: 7d, 1d12h)", t.val)
		return 0, false
	case d < 0:
		c.at(w, t.line, field, "must not be negative, got %s", t.val)
		return 0, false
	case d == 0 && positive:
		c.at(w, t.line, field, "must be positive, got %s", t.val)
		return 0, false
	}
	return d, true
}

// compilePolicies compiles the policies section. Policy ids are unique
// across every policy kind, and may be neither an offer id nor a reserved
// reason id: a reason's rule id must say which rule it is.
func compilePolicies(c *collector, raw *rawFile, r *Rules, offerIDs map[string]int) {
	seen := make(map[string]int)
	policyID := func(w where, id text, line int) {
		before := len(c.errs) + c.dropped
		checkID(c, w, id, line, seen, "policy")
		if len(c.errs)+c.dropped != before {
			return
		}
		switch {
		case slices.Contains(reservedRuleIDs, id.val):
			c.at(w, id.line, "id", "%q is reserved for reasons that are not policies", id.val)
		case offerIDs[id.val] != 0:
			c.at(w, id.line, "id", "already used by the offer on line %d: reasons could not tell them apart", offerIDs[id.val])
		}
	}
	for i := range raw.caps {
		rc := &raw.caps[i]
		w := where{kind: kindFrequencyCap, rule: rc.id.val}
		before := len(c.errs) + c.dropped
		policyID(w, rc.id, rc.line)
		fc := &frequencyCap{id: rc.id.val, max: rc.max}
		switch ch := rc.channel.val; {
		case ch == "" || ch == "*":
		case !channelPattern.MatchString(ch):
			c.at(w, rc.channel.line, "channel", "%q must match %s, or be \"*\" (or omitted) for every channel", ch, channelPattern)
		default:
			fc.channel = ch
		}
		switch {
		case !rc.maxSeen:
			c.at(w, rc.line, "max", "required (the most sends allowed per period, at least 1)")
		case rc.maxOK && rc.max < 1:
			c.at(w, rc.line, "max", "must be at least 1, got %d (to stop a channel, remove its offers)", rc.max)
		}
		fc.period, _ = checkDuration(c, w, "period", rc.period, rc.line, true)
		fc.periodText = rc.period.val
		if len(c.errs)+c.dropped != before {
			continue
		}
		on := fc.channel + " sends"
		if fc.channel == "" {
			on = "sends on all channels"
		}
		fc.subject = "frequency cap: at most " + strconv.Itoa(fc.max) + " " + on + " per " + fc.periodText
		r.caps = append(r.caps, fc)
	}
	for i := range raw.quiet {
		rq := &raw.quiet[i]
		w := where{kind: kindQuietHours, rule: rq.id.val}
		before := len(c.errs) + c.dropped
		policyID(w, rq.id, rq.line)
		q := &quietHours{id: rq.id.val}
		for _, ch := range rq.channels {
			if !channelPattern.MatchString(ch.val) {
				c.at(w, ch.line, "channels", "channel %q must match %s", ch.val, channelPattern)
				continue
			}
			q.channels.add(ch.val)
		}
		if len(rq.channels) == 0 {
			c.at(w, rq.line, "channels", "required: the channels the quiet hours apply to, such as [sms, push]")
		}
		fromOK, toOK := false, false
		q.from, fromOK = checkClock(c, w, "from", rq.from, rq.line)
		q.to, toOK = checkClock(c, w, "to", rq.to, rq.line)
		if fromOK && toOK && q.from == q.to {
			c.at(w, rq.to.line, "to", "must differ from from (%s): the window would be empty", rq.from.val)
		}
		if len(c.errs)+c.dropped != before {
			continue
		}
		q.window = rq.from.val + "-" + rq.to.val
		r.quiet = append(r.quiet, q)
	}
	if rp := raw.purchaseCooldown; rp != nil {
		w := where{kind: kindPurchaseCooldown, rule: rp.id.val}
		before := len(c.errs) + c.dropped
		policyID(w, rp.id, rp.line)
		pc := &purchaseCooldown{id: rp.id.val, periodText: rp.period.val}
		pc.period, _ = checkDuration(c, w, "period", rp.period, rp.line, true)
		if len(c.errs)+c.dropped == before {
			r.purchaseCooldown = pc
		}
	}
}

func checkClock(c *collector, w where, field string, t text, line int) (int, bool) {
	if !t.set || t.val == "" {
		c.at(w, cmp.Or(t.line, line), field, "required (local time as HH:MM)")
		return 0, false
	}
	m := clockPattern.FindStringSubmatch(t.val)
	if m == nil {
		c.at(w, t.line, field, "invalid time %q (want HH:MM, 00:00 to 23:59)", t.val)
		return 0, false
	}
	h, _ := strconv.Atoi(m[1])
	mm, _ := strconv.Atoi(m[2])
	return h*60 + mm, true
}

func compileFallbacks(c *collector, raw *rawFile, r *Rules) {
	for i := range raw.fallbacks {
		rf := &raw.fallbacks[i]
		w := where{kind: kindFallback, rule: rf.channel.val}
		before := len(c.errs) + c.dropped
		if !channelPattern.MatchString(rf.channel.val) {
			c.at(w, rf.channel.line, "", "channel %q must match %s", rf.channel.val, channelPattern)
		}
		switch id := rf.offerID; {
		case !id.set || id.val == "":
			c.at(w, rf.line, "offer_id", "required")
		case !ruleIDPattern.MatchString(id.val):
			c.at(w, id.line, "offer_id", "must match %s", ruleIDPattern)
		}
		tpl := checkTemplate(c, w, "template", rf.template, rf.line)
		if len(c.errs)+c.dropped != before {
			continue
		}
		payload := make(map[string]string, len(rf.payload))
		for _, e := range rf.payload {
			payload[e.key] = e.val
		}
		if r.fallbacks == nil {
			r.fallbacks = make(map[string]*fallback)
		}
		r.fallbacks[rf.channel.val] = &fallback{offerID: rf.offerID.val, template: tpl, payload: payload}
	}
}

// Quiet hours.

// active reports whether local wall-clock time t is inside the window.
func (q *quietHours) active(t time.Time) bool {
	h, m, s := t.Clock()
	sec := h*3600 + m*60 + s
	from, to := q.from*60, q.to*60
	if from < to {
		return from <= sec && sec < to
	}
	return sec >= from || sec < to // wraps midnight
}

// end returns the first instant after t (inside the window, in loc) at
// which the local wall clock reads the window's end.
func (q *quietHours) end(t time.Time) time.Time {
	y, mo, d := t.Date()
	h, m, _ := t.Clock()
	if h*60+m >= q.to {
		d++ // the end is tomorrow (the window wraps midnight)
	}
	return wallClock(y, mo, d, q.to/60, q.to%60, t)
}

// wallClock returns the first instant after now whose wall clock in now's
// location reads y-mo-d h:m, handling the two DST anomalies: a wall time
// skipped by a spring-forward transition ends the window at the
// transition (the first instant whose wall clock is past it), and a wall
// time that occurs twice (fall back) is the first occurrence after now.
func wallClock(y int, mo time.Month, d, h, m int, now time.Time) time.Time {
	loc := now.Location()
	t := time.Date(y, mo, d, h, m, 0, 0, loc)
	want := time.Date(y, mo, d, h, m, 0, 0, time.UTC) // normalised y-mo-d h:m
	ty, tmo, td := t.Date()
	th, tm, _ := t.Clock()
	if got := time.Date(ty, tmo, td, th, tm, 0, 0, time.UTC); !got.Equal(want) {
		// The wall time does not exist: time.Date read it in one of the
		// two zones around the gap. The gap's edge is the answer.
		start, end := t.ZoneBounds()
		if got.Before(want) && !end.IsZero() {
			t = end
		} else if got.After(want) && !start.IsZero() {
			t = start
		}
	}
	if !t.After(now) {
		// A repeated wall time, read as its first occurrence: take the
		// one in now's zone.
		_, off := now.Zone()
		if t2 := time.Date(y, mo, d, h, m, 0, 0, time.FixedZone("", off)).In(loc); t2.After(now) {
			t = t2
		}
	}
	return t
}

// Time zones of users.

// locations caches time.LoadLocation (which reads the zone file on every
// call) for the tz attributes of users. Names come from events, so the
// cache is bounded; past the bound, lookups are simply not cached.
var locations struct {
	m sync.Map // string -> *time.Location, nil for an unknown name
	n atomic.Int32
}

const maxCachedLocations = 1024

func userLocation(name string) *time.Location {
	if v, ok := locations.m.Load(name); ok {
		return v.(*time.Location)
	}
	var loc *time.Location
	if name != "Local" && name != "" {
		loc, _ = time.LoadLocation(name)
	}
	if locations.n.Load() < maxCachedLocations {
		if _, loaded := locations.m.LoadOrStore(name, loc); !loaded {
			locations.n.Add(1)
		}
	}
	return loc
}

// location is the user's time zone: the profile's tz attribute if it is a
// known zone, else the rules' default. bad is the unknown tz attribute
// that was ignored, if any.
func (r *Rules) location(p *profile.Profile) (loc *time.Location, bad string) {
	def := time.UTC
	if r != nil && r.defaultTZ != nil {
		def = r.defaultTZ
	}
	name := p.Attr("tz")
	if name == "" {
		return def, ""
	}
	if loc := userLocation(name); loc != nil {
		return loc, ""
	}
	return def, name
}

// zoneNote names the zone used, for the trace and reasons.
func (r *Rules) zoneNote(p *profile.Profile, loc *time.Location, bad string) string {
	switch {
	case bad != "":
		return loc.String() + " (default; the user's tz " + strconv.Quote(bad) + " is unknown)"
	case p.Attr("tz") == "":
		return loc.String() + " (default)"
	}
	return loc.String()
}

// A/B splits.

// abBucket maps (user, offer) to [0, 1), uniformly and stably: the
// FNV-1a 64 hash of user + "\x00" + offer, mixed by MurmurHash3's 64-bit
// finaliser, top 53 bits. The offer id is part of the key so that control
// groups of different offers are independent. The finaliser matters: the
// high bits of FNV-1a hardly change with the last bytes, so without it
// offers "a" and "b", or users "u-1" and "u-2", would share buckets.
func abBucket(userID, offerID string) float64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(userID); i++ {
		h ^= uint64(userID[i])
		h *= prime
	}
	h *= prime // the "\x00" separator: xor with 0 is a no-op
	for i := 0; i < len(offerID); i++ {
		h ^= uint64(offerID[i])
		h *= prime
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return float64(h>>11) / (1 << 53)
}

func formatShare(f float64) string {
	return strconv.FormatFloat(math.Round(f*10000)/100, 'f', -1, 64) + "%"
}
