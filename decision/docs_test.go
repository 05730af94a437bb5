package decision

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"github.com/nudge-dm/nudge/profile"
)

// The rule author's reference, docs/rules.md, is executed here: every
// ```yaml block is parsed (blocks after a <!-- fragment --> line are not
// whole files and are skipped; blocks after <!-- example: NAME --> are
// also checked by docExamples[NAME]; blocks after <!-- invalid --> must
// be refused with the errors of the next <!-- errors --> ```text block),
// and every line of a ```cel block is evaluated against the sample user of
// the document and compared with the value after its "// =>". Every line
// of a ```text block after <!-- compare --> states a campaign's counts and
// the statistics of its report, which must be what Compare gives, rounded
// as formatCompare rounds them.

const docsPath = "../docs/rules.md"

type docBlock struct {
	lang   string // yaml, cel, "cel event"
	marker string // the <!-- ... --> line before the block, if any
	line   int    // of the opening fence
	text   string
}

func readDocBlocks(t *testing.T) []docBlock {
	t.Helper()
	f, err := os.Open(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []docBlock
	var cur *docBlock
	var body strings.Builder
	marker := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && line == "```":
			cur.text = body.String()
			blocks = append(blocks, *cur)
			cur, marker = nil, ""
		case cur != nil:
			body.WriteString(line)
			body.WriteByte('\n')
		case strings.HasPrefix(line, "```"):
			cur = &docBlock{lang: strings.TrimPrefix(line, "```"), marker: marker, line: n}
			body.Reset()
		case strings.HasPrefix(line, "<!--") && strings.HasSuffix(line, "-->"):
			marker = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(line, "<!--"), "-->"))
		case strings.TrimSpace(line) != "":
			marker = ""
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: unterminated code block", docsPath, cur.line)
	}
	return blocks
}

// docNow is the sample time of docs/rules.md: Saturday 1 March 2025,
// 12:00 UTC (07:00 in New York, the sample user's zone).
var docNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// docUser is the sample user of docs/rules.md ("The sample user"); keep
// the two in step.
func docUser(t testing.TB) *profile.Profile {
	at := func(s string) time.Time {
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	events := []profile.Event{
		{Type: "unsubscribe", Channel: "email", OccurredAt: at("2025-02-20T10:00:00Z")},
		{Type: "message_sent", Channel: "push", OccurredAt: at("2025-02-26T12:00:00Z"), Attributes: map[string]string{"offer_id": "cart-reminder"}},
		{Type: "purchase", Category: "hats", Value: 59.9, OccurredAt: at("2025-02-27T12:00:00Z")},
		{Type: "message_sent", Channel: "sms", OccurredAt: at("2025-02-28T18:00:00Z"), Attributes: map[string]string{"offer_id": "phones-coupon"}},
		{Type: "login", OccurredAt: at("2025-03-01T09:00:00Z"), Attributes: map[string]string{"tz": "America/New_York"}},
		{Type: "view", Category: "laptops", OccurredAt: at("2025-03-01T08:00:00Z")},
		{Type: "view", Category: "phones", OccurredAt: at("2025-03-01T11:40:00Z")},
		{Type: "view", Category: "phones", OccurredAt: at("2025-03-01T11:50:00Z")},
		{Type: "add_to_cart", Category: "phones", ItemID: "sku-1", OccurredAt: at("2025-03-01T11:55:00Z")},
		{Type: "view", Category: "phones", ItemID: "sku-1", OccurredAt: at("2025-03-01T12:00:00Z"),
			Attributes: map[string]string{"referrer": "newsletter"}},
	}
	p := &profile.Profile{}
	l := profile.Limits{}.WithDefaults()
	for i := range events {
		e := &events[i]
		e.ID, e.UserID = fmt.Sprint("e", i), "user-42"
		if r := p.ApplyEvent(e, e.OccurredAt, l); r.Status != profile.Applied {
			t.Fatalf("sample event %d: %v", i, r)
		}
	}
	p.Compact(docNow, l)
	return p
}

// docEvent is the sample event (the last view), for trigger expressions.
func docEvent() *profile.Event {
	return &profile.Event{ID: "e9", UserID: "user-42", Type: "view", Category: "phones", ItemID: "sku-1",
		OccurredAt: docNow, Attributes: map[string]string{"referrer": "newsletter"}}
}

// docRequest is the sample request, for offer expressions.
var docRequest = Request{UserID: "user-42", Channel: "sms", Placement: "home_banner", Context: map[string]string{"category": "phones"}}

func TestDocsYAML(t *testing.T) {
	blocks := readDocBlocks(t)
	parsed, examples := 0, map[string]bool{}
	var invalid error             // of the last <!-- invalid --> block
	traces := map[string]string{} // of the examples, for the sample request
	for _, b := range blocks {
		if ex, ok := strings.CutPrefix(b.marker, "trace: "); ok && b.lang == "text" {
			if got, ok := traces[ex]; !ok || got != b.text {
				t.Errorf("%s:%d: trace of example %q\n got %s\nwant %s", docsPath, b.line, ex, got, b.text)
			}
			continue
		}
		if b.lang == "text" && b.marker == "errors" {
			if invalid == nil {
				t.Errorf("%s:%d: errors block without an invalid file before it", docsPath, b.line)
				continue
			}
			if got := invalid.Error() + "\n"; got != b.text {
				t.Errorf("%s:%d: errors\n got %s\nwant %s", docsPath, b.line, got, b.text)
			}
			invalid = nil
			continue
		}
		if b.lang != "yaml" || b.marker == "fragment" {
			continue
		}
		name := fmt.Sprintf("%s:%d", docsPath, b.line)
		if b.marker == "invalid" {
			_, invalid = Parse("rules.yaml", []byte(b.text))
			if invalid == nil {
				t.Errorf("%s: invalid example parses", name)
			}
			continue
		}
		r, err := Parse(name, []byte(b.text))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		parsed++
		// Whatever the rules, deciding and stepping must work.
		p := docUser(t)
		req := docRequest
		req.Explain = true
		var tb strings.Builder
		for _, s := range r.Decide(p, req, docNow).Trace {
			fmt.Fprintf(&tb, "%s | %s | %s | %v\n", s.RuleID, s.Subject, s.Value, s.Passed)
		}
		r.Step(profile.Limits{})(p, []profile.Event{*docEvent()}, docNow)
		if ex, ok := strings.CutPrefix(b.marker, "example: "); ok {
			traces[ex] = tb.String()
			check := docExamples[ex]
			if check == nil {
				t.Errorf("%s: no check for example %q", name, ex)
				continue
			}
			examples[ex] = true
			t.Run(ex, func(t *testing.T) { check(t, r) })
		}
	}
	if invalid != nil {
		t.Errorf("invalid example without its errors block")
	}
	if parsed < 10 {
		t.Errorf("only %d whole rules files in %s", parsed, docsPath)
	}
	for ex := range docExamples {
		if !examples[ex] {
			t.Errorf("example %q is not in %s", ex, docsPath)
		}
	}
}

func TestDocsCEL(t *testing.T) {
	env, err := envs()
	if err != nil {
		t.Fatal(err)
	}
	p := docUser(t)
	ev := &eventVal{}
	ev.set(docEvent())
	trig := &triggerVars{event: ev, profile: &profileVal{p: p, now: docNow}, now: types.Timestamp{Time: docNow}}
	off := &offerVars{
		profile:   &profileVal{p: p, now: docNow},
		now:       types.Timestamp{Time: docNow},
		channel:   types.String(docRequest.Channel),
		placement: types.String(docRequest.Placement),
		context:   types.NewStringStringMap(types.DefaultTypeAdapter, docRequest.Context),
	}
	n := 0
	for _, b := range readDocBlocks(t) {
		var e *cel.Env
		var vars any
		switch b.lang {
		case "cel":
			e, vars = env.offer, off
		case "cel event":
			e, vars = env.trigger, trig
		default:
			continue
		}
		for i, line := range strings.Split(strings.TrimRight(b.text, "\n"), "\n") {
			src, want, ok := strings.Cut(line, "// =>")
			src, want = strings.TrimSpace(src), strings.TrimSpace(want)
			where := fmt.Sprintf("%s:%d", docsPath, b.line+1+i)
			if src == "" || strings.HasPrefix(src, "//") {
				continue
			}
			if !ok {
				t.Errorf("%s: %s: no // => value", where, src)
				continue
			}
			n++
			got, err := evalDoc(e, src, vars)
			if err != nil {
				got = "error: " + err.Error()
			}
			if got != want && !(strings.HasPrefix(want, "error: ") && strings.HasPrefix(got, want)) {
				t.Errorf("%s: %s\n got %s\nwant %s", where, src, got, want)
			}
		}
	}
	if n < 30 {
		t.Errorf("only %d CEL examples in %s", n, docsPath)
	}
}

func evalDoc(env *cel.Env, src string, vars any) (string, error) {
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return "", iss.Err()
	}
	prg, err := env.Program(ast, cel.CostLimit(MaxCost))
	if err != nil {
		return "", err
	}
	out, _, err := prg.Eval(vars)
	if err != nil {
		return "", err
	}
	return formatDocValue(out), nil
}

func formatDocValue(v ref.Val) string {
	switch v := v.(type) {
	case types.Bool:
		return strconv.FormatBool(bool(v))
	case types.Int:
		return strconv.FormatInt(int64(v), 10)
	case types.Double:
		return strconv.FormatFloat(float64(v), 'g', -1, 64)
	case types.String:
		return strconv.Quote(string(v))
	case types.Timestamp:
		return v.UTC().Format(time.RFC3339)
	case types.Duration:
		return v.Duration.String()
	}
	return fmt.Sprintf("%v", v.Value())
}

// docExamples check what docs/rules.md says about its worked examples.
var docExamples = map[string]func(t *testing.T, r *Rules){
	"complete": func(t *testing.T, r *Rules) {
		p := docUser(t)
		// 07:00 in New York: quiet hours until 08:00.
		req := docRequest
		req.Explain = true
		d := r.Decide(p, req, docNow)
		if d.Verdict != VerdictHold || d.Offer.ID != "phones-coupon" || !d.NotBefore.Equal(docNow.Add(time.Hour)) {
			t.Errorf("sms at 07:00 New York: %v %+v until %v (%q)", d.Verdict, d.Offer, d.NotBefore, d.Reasons)
		}
		// The trace shown in "How a decision is made".
		want := []struct {
			rule, value string
			passed      bool
		}{
			{"consent", "granted", true},
			{"sms-daily-cap", "1 of 2 sends used", true},
			{"global-weekly-cap", "2 of 8 sends used", true},
			{"recent-purchase", "no purchase of phones kept", true},
			{"phones-coupon", "true", true},
			{"night", "local time 07:00 in America/New_York: inside", false},
		}
		if len(d.Trace) != len(want) {
			t.Fatalf("trace %v", d.Trace)
		}
		for i, w := range want {
			if s := d.Trace[i]; s.RuleID != w.rule || s.Value != w.value || s.Passed != w.passed {
				t.Errorf("trace step %d = %+v, want %+v", i, s, w)
			}
		}
		// An hour later it sends.
		if d := r.Decide(p, docRequest, docNow.Add(time.Hour)); d.Verdict != VerdictSend || d.Offer.ID != "phones-coupon" {
			t.Errorf("sms at 08:00 New York: %v %+v (%q)", d.Verdict, d.Offer, d.Reasons)
		}
		// The fallback for web.
		if d := r.Fallback("web"); d.Verdict != VerdictSend || d.Offer.ID != "web-welcome-fallback" {
			t.Errorf("fallback: %+v", d)
		}
	},
	"caps": func(t *testing.T, r *Rules) {
		p := docUser(t)
		// One sms 18h ago: a second is allowed, a third is not.
		if d := r.Decide(p, docRequest, docNow); d.Verdict != VerdictSend {
			t.Errorf("first decision: %v (%q)", d.Verdict, d.Reasons)
		}
		e := profile.Event{ID: "x", Type: "message_sent", Channel: "sms", OccurredAt: docNow}
		p.ApplyEvent(&e, docNow, profile.Limits{}.WithDefaults())
		d := r.Decide(p, docRequest, docNow.Add(time.Minute))
		want := []Reason{{"sms-daily", "sms-daily: 2 of 2 sms sends in the last 24h"}}
		if d.Verdict != VerdictNone || !reflect.DeepEqual(d.Reasons, want) {
			t.Errorf("after a second sms: %v %q, want NONE %q", d.Verdict, d.Reasons, want)
		}
		// 18h after the first sms it has left the window.
		if d := r.Decide(p, docRequest, time.Date(2025, 3, 1, 18, 0, 1, 0, time.UTC)); d.Verdict != VerdictSend {
			t.Errorf("a day after the first sms: %v (%q)", d.Verdict, d.Reasons)
		}
	},
	"quiet-hours": func(t *testing.T, r *Rules) {
		p := docUser(t)
		d := r.Decide(p, Request{Channel: "push"}, docNow)
		want := time.Date(2025, 3, 1, 8, 0, 0, 0, mustLoc(t, "America/New_York"))
		if d.Verdict != VerdictHold || !d.NotBefore.Equal(want) {
			t.Errorf("push at 07:00 New York: %v until %v, want HOLD until %v", d.Verdict, d.NotBefore, want)
		}
		const reason = "night: quiet hours 21:00-08:00 for push (local time 07:00 in America/New_York); hold until 2025-03-01 08:00 EST"
		if got := d.Reasons[len(d.Reasons)-1]; got != (Reason{"night", reason}) {
			t.Errorf("reason %q, want %q", got, reason)
		}
		if d := r.Decide(p, Request{Channel: "web"}, docNow); d.Verdict != VerdictSend {
			t.Errorf("web: %v", d.Verdict)
		}
		// Without a tz, Paris: 13:00, no quiet hours.
		if d := r.Decide(nil, Request{Channel: "push"}, docNow); d.Verdict != VerdictSend {
			t.Errorf("user without tz: %v (%q)", d.Verdict, d.Reasons)
		}
	},
	"cooldowns": func(t *testing.T, r *Rules) {
		p := docUser(t)
		// hats were bought 2 days ago: hats-coupon is skipped; the push
		// cart reminder was sent 3 days ago, within its 7d cooldown.
		d := r.Decide(p, Request{Channel: "email"}, docNow)
		if d.Verdict != VerdictNone || len(d.Reasons) != 1 || d.Reasons[0].RuleID != "consent" {
			t.Errorf("email (unsubscribed): %v %q", d.Verdict, d.Reasons)
		}
		d = r.Decide(p, Request{Channel: "push"}, docNow)
		want := []Reason{
			{"cart-reminder", "offer cart-reminder skipped: sent 3d ago, within its cooldown of 7d"},
			{"recent-purchase", "offer hats-coupon skipped: hats bought 2d ago, within the purchase cooldown of 14d"},
			{"", "no eligible offer"},
		}
		if d.Verdict != VerdictNone || !reflect.DeepEqual(d.Reasons, want) {
			t.Errorf("push: %v %q, want %q", d.Verdict, d.Reasons, want)
		}
	},
	"ab": func(t *testing.T, r *Rules) {
		// A user who left something in the cart, and had no reminder.
		p := build(t, docNow, profile.Event{Type: "add_to_cart", OccurredAt: docNow.Add(-time.Hour)})
		if d := r.Decide(docUser(t), Request{UserID: "user-42", Channel: "push"}, docNow); d.Verdict != VerdictNone ||
			d.Reasons[0].Message != "offer cart-reminder skipped: sent 3d ago, within its cooldown of 7d" {
			t.Errorf("sample user: %v %q", d.Verdict, d.Reasons)
		}
		control := 0
		for i := range 10_000 {
			d := r.Decide(p, Request{UserID: fmt.Sprint("user-", i), Channel: "push"}, docNow)
			if d.Control {
				control++
			}
		}
		if control < 1800 || control > 2200 {
			t.Errorf("%d of 10000 users in the control group, want about 2000", control)
		}
	},
	"win-back": func(t *testing.T, r *Rules) {
		p := docUser(t)
		if d := r.Decide(p, Request{Channel: "push"}, docNow); d.Verdict != VerdictNone {
			t.Errorf("active user: %v %+v", d.Verdict, d.Offer)
		}
		if d := r.Decide(p, Request{Channel: "push"}, docNow.Add(40*24*time.Hour)); d.Verdict != VerdictSend || d.Offer.ID != "win-back" {
			t.Errorf("40 days later: %v %+v (%q)", d.Verdict, d.Offer, d.Reasons)
		}
		if d := r.Decide(nil, Request{Channel: "push"}, docNow); d.Verdict != VerdictNone {
			t.Errorf("unknown user: %v %+v", d.Verdict, d.Offer)
		}
	},
	"cart-abandoned": func(t *testing.T, r *Rules) {
		at := func(d time.Duration) time.Time { return docNow.Add(d) }
		cart := profile.Event{ID: "c1", UserID: "u1", Type: "add_to_cart", ItemID: "sku-1", OccurredAt: docNow}
		buy := func(d time.Duration) batch {
			return batch{[]profile.Event{{ID: "b1", UserID: "u1", Type: "purchase", OccurredAt: at(d)}}, at(d)}
		}
		viewAt := func(d time.Duration) batch {
			return batch{[]profile.Event{{ID: "v1", UserID: "u1", Type: "view", OccurredAt: at(d)}}, at(d)}
		}
		added := batch{[]profile.Event{cart}, docNow}

		// Nothing bought: the push at 13:00, not before, with its due
		// time; after a view, the e-mail at 12:00 the next day.
		p := &profile.Profile{UserID: "u1"}
		acts, notes := journey(t, r, p, []batch{added}, at(59*time.Minute), at(time.Hour))
		want := profile.Action{
			ID: profile.ActionID("u1", "c1", "cart-abandoned"), UserID: "u1", TriggerID: "cart-abandoned", Channel: "push",
			Template: "cart_reminder", Payload: map[string]string{"item": "sku-1"}, TriggeredAt: at(time.Hour),
			DueAt: at(time.Hour), EventID: "c1", RulesVersion: r.Version(),
		}
		if len(acts) != 1 || !reflect.DeepEqual(acts[0], want) {
			t.Fatalf("at 13:00: %+v, want %+v (notes %q)", acts, want, notes)
		}
		acts, notes = journey(t, r, p, []batch{viewAt(2 * time.Hour)}, at(24*time.Hour-time.Second), at(24*time.Hour))
		if got := fired(acts); !slices.Equal(got, []string{"cart-abandoned-email@c1"}) ||
			acts[0].Channel != "email" || !acts[0].DueAt.Equal(at(24*time.Hour)) {
			t.Errorf("the next day after a view: %+v (notes %q)", acts, notes)
		}
		if len(p.Timers) != 0 {
			t.Errorf("timers left: %+v", p.Timers)
		}

		// Without a view, the e-mail's when does not hold.
		acts, notes = journey(t, r, &profile.Profile{UserID: "u1"}, []batch{added}, at(time.Hour), at(24*time.Hour))
		if got := fired(acts); !slices.Equal(got, []string{"cart-abandoned@c1"}) || !slices.Contains(notes, "cart-abandoned-email:dropped:when") {
			t.Errorf("no view: fired %q, notes %q", got, notes)
		}

		// A purchase at 12:30 cancels both; one at 15:00, the e-mail.
		acts, notes = journey(t, r, &profile.Profile{UserID: "u1"}, []batch{added, buy(30 * time.Minute)}, at(time.Hour), at(24*time.Hour))
		if len(acts) != 0 || !slices.Equal(notes, []string{"cart-abandoned:scheduled", "cart-abandoned:cancelled"}) {
			t.Errorf("bought in the wait: fired %q, notes %q", fired(acts), notes)
		}
		p = &profile.Profile{UserID: "u1"}
		acts, _ = journey(t, r, p, []batch{added}, at(time.Hour))
		more, notes := journey(t, r, p, []batch{viewAt(2 * time.Hour), buy(3 * time.Hour)}, at(24*time.Hour))
		if got := fired(append(acts, more...)); !slices.Equal(got, []string{"cart-abandoned@c1"}) ||
			!slices.Contains(notes, "cart-abandoned-email:cancelled") {
			t.Errorf("bought after the push: fired %q, notes %q", got, notes)
		}
	},
	"trigger-policies": func(t *testing.T, r *Rules) {
		noon := time.Date(2025, 3, 1, 11, 0, 0, 0, time.UTC)   // 12:00 in Paris
		night := time.Date(2025, 3, 1, 22, 0, 0, 0, time.UTC)  // 23:00 in Paris
		morning := time.Date(2025, 3, 2, 7, 0, 0, 0, time.UTC) // 08:00 in Paris
		view := func(at time.Time) []batch {
			return []batch{{[]profile.Event{{ID: "v1", UserID: "u1", Type: "view", OccurredAt: at}}, at}}
		}
		acts, notes := journey(t, r, &profile.Profile{UserID: "u1"}, view(noon))
		if got := fired(acts); !slices.Equal(got, []string{"back-in-stock@v1", "coupon@v1"}) ||
			!slices.Contains(notes, "new-arrivals:dropped:channel_limit") {
			t.Errorf("a view at noon: fired %q, notes %q", got, notes)
		}
		acts, notes = journey(t, r, &profile.Profile{UserID: "u1"}, view(night), morning.Add(-time.Minute), morning)
		if got := fired(acts); !slices.Equal(got, []string{"back-in-stock@v1", "coupon@v1"}) {
			t.Fatalf("a view at night: fired %q, notes %q", got, notes)
		}
		for _, a := range acts {
			if !a.TriggeredAt.Equal(morning) || !a.DueAt.Equal(night) {
				t.Errorf("%s: triggered_at %v, due_at %v; want %v, %v", a.TriggerID, a.TriggeredAt, a.DueAt, morning, night)
			}
		}
		buy := []batch{{[]profile.Event{{ID: "b1", UserID: "u1", Type: "purchase", OccurredAt: night}}, night}}
		if acts, _ := journey(t, r, &profile.Profile{UserID: "u1"}, buy); !slices.Equal(fired(acts), []string{"receipt@b1"}) {
			t.Errorf("a purchase at night: fired %q", fired(acts))
		}
	},
	"measured": func(t *testing.T, r *Rules) {
		// "An example" of "Measuring campaigns": eight users, their
		// events applied one by one at their own time through the
		// rules' step (the profile encoded between calls, as the store
		// keeps it), the journey's timers fired at 13:00 every day.
		const campaign = "cart-abandoned"
		at := func(day, hour, min int) time.Time { return time.Date(2025, 3, day, hour, min, 0, 0, time.UTC) }
		type docEvent struct {
			typ   string
			at    time.Time
			value float64
		}
		cart := func(day int) docEvent { return docEvent{"add_to_cart", at(day, 12, 0), 0} }
		buy := func(at time.Time, value float64) docEvent { return docEvent{"purchase", at, value} }
		type counts struct {
			exposed, converted int64
			value              float64
			pushes             int
		}
		users := []struct {
			id      string
			control bool
			events  []docEvent
			want    counts
		}{
			{"ana", false, []docEvent{cart(1), buy(at(1, 15, 0), 40)}, counts{1, 1, 40, 1}},
			{"ben", false, []docEvent{cart(1), buy(at(1, 12, 30), 30)}, counts{0, 0, 0, 0}},
			{"cleo", false, []docEvent{cart(1), buy(at(2, 10, 0), 25), buy(at(3, 10, 0), 60)}, counts{1, 1, 25, 1}},
			{"dan", false, []docEvent{cart(1), buy(at(5, 12, 0), 20)}, counts{1, 0, 0, 1}},
			{"eve", false, []docEvent{cart(1), cart(2), buy(at(4, 12, 0), 50)}, counts{1, 1, 50, 2}},
			{"ivan", true, []docEvent{cart(1), buy(at(2, 9, 0), 35)}, counts{1, 1, 35, 0}},
			{"max", true, []docEvent{cart(1)}, counts{1, 0, 0, 0}},
			{"vic", true, []docEvent{cart(1), buy(at(1, 12, 30), 30)}, counts{0, 0, 0, 0}},
		}
		step, fire := r.Step(profile.Limits{}), r.FireStep(profile.Limits{})
		arms := map[profile.Variant]*profile.Arm{profile.Treated: {}, profile.Control: {}}
		pushes := 0
		for _, u := range users {
			if got := InControl(u.id, campaign, 0.2); got != u.control {
				t.Errorf("%s: in the control group %v, the document says %v", u.id, got, u.control)
			}
			// The user's timeline: events, and 13:00 every day.
			type tick struct {
				at time.Time
				e  *profile.Event // nil: fire the due timers
			}
			var timeline []tick
			for i, de := range u.events {
				timeline = append(timeline, tick{de.at, &profile.Event{ID: fmt.Sprint(u.id, "-", i), UserID: u.id,
					Type: de.typ, OccurredAt: de.at, Value: de.value}})
			}
			for day := 1; day <= 5; day++ {
				timeline = append(timeline, tick{at: at(day, 13, 0)})
			}
			slices.SortStableFunc(timeline, func(a, b tick) int { return a.at.Compare(b.at) })
			var stored []byte
			var got counts
			run := func(s profile.Step, events []profile.Event, now time.Time) profile.Outcome {
				p := &profile.Profile{}
				if stored != nil {
					var err error
					if p, err = profile.Decode(stored); err != nil {
						t.Fatal(err)
					}
				}
				p.UserID = u.id // as the store sets it
				out := s(p, events, now)
				if out.Changed {
					stored = profile.Encode(p)
				}
				return out
			}
			for _, k := range timeline {
				var out profile.Outcome
				if k.e == nil {
					out = run(fire, nil, k.at)
				} else {
					out = run(step, []profile.Event{*k.e}, k.at)
					// Sent again: a duplicate, which counts nothing.
					again := run(step, []profile.Event{*k.e}, k.at.Add(time.Second))
					if again.Results[0].Status != profile.Duplicate || len(again.Measures) > 0 || len(again.Actions) > 0 {
						t.Errorf("%s: %s sent again: %v, measures %v, %d actions", u.id, k.e.ID, again.Results[0].Status,
							again.Measures, len(again.Actions))
					}
				}
				got.pushes += len(out.Actions)
				for _, m := range out.Measures {
					if m.Campaign != campaign {
						t.Errorf("%s: measure of campaign %q", u.id, m.Campaign)
					}
					if (m.Variant == profile.Control) != u.control {
						t.Errorf("%s: measure of variant %v", u.id, m.Variant)
					}
					if m.Exposed > 0 && !k.at.Equal(at(1, 13, 0)) {
						t.Errorf("%s: exposed at %v, want 1 March 13:00", u.id, k.at)
					}
					got.exposed += m.Exposed
					got.converted += m.Converted
					got.value += m.Value
					a := arms[m.Variant]
					a.Exposed += m.Exposed
					a.Converted += m.Converted
					a.Value += m.Value
				}
			}
			if got != u.want {
				t.Errorf("%s: exposed %d, converted %d, value %v, %d pushes; want %+v", u.id, got.exposed, got.converted,
					got.value, got.pushes, u.want)
			}
			pushes += got.pushes
		}
		treated, control := *arms[profile.Treated], *arms[profile.Control]
		if want := (profile.Arm{Exposed: 4, Converted: 3, Value: 115}); treated != want {
			t.Errorf("treated %+v, want %+v", treated, want)
		}
		if want := (profile.Arm{Exposed: 2, Converted: 1, Value: 35}); control != want {
			t.Errorf("control %+v, want %+v", control, want)
		}
		if treated.Rate() != 0.75 || control.Rate() != 0.5 {
			t.Errorf("rates %v and %v, want 0.75 and 0.5", treated.Rate(), control.Rate())
		}
		if pushes != 5 {
			t.Errorf("%d pushes, want 5", pushes)
		}
		const line = "3 of 4 treated (75%), 1 of 2 control (50%): uplift +25 points, lift +50%, 95% interval -66% to +570%, p = 0.54"
		if got := formatCompare(treated, control); got != line {
			t.Errorf("report\n got %s\nwant %s", got, line)
		}
	},
	"thompson": func(t *testing.T, r *Rules) {
		// "Offers that learn": the draws of the document.
		s := docSampler{"free-shipping": {0.0281, 400, 12}, "ten-off": {0.0574, 500, 30}, "new-arrivals": {0.3816, 0, 0}}
		d := r.Decide(docUser(t), Request{UserID: "user-42", Channel: "web", Sampler: s, Explain: true}, docNow)
		if d.Verdict != VerdictSend || d.Offer.ID != "new-arrivals" {
			t.Fatalf("sample user: %v %+v (%q)", d.Verdict, d.Offer, d.Reasons)
		}
		const reason = "offer new-arrivals chosen by thompson sampling among free-shipping, ten-off, new-arrivals (best draw of a conversion rate: 0.3816)"
		if !slices.Contains(d.Reasons, Reason{"new-arrivals", reason}) {
			t.Errorf("reasons %q, want %q", d.Reasons, reason)
		}
		var draws []string
		for _, st := range d.Trace {
			if strings.HasPrefix(st.Subject, "thompson sampling") {
				draws = append(draws, fmt.Sprintf("%s | %s | %s | %v", st.RuleID, st.Subject, st.Value, st.Passed))
			}
		}
		want := []string{
			"free-shipping | thompson sampling: a conversion rate drawn from its measured conversions | drew 0.0281 (12 of 400 treated users converted) | true",
			"ten-off | thompson sampling: a conversion rate drawn from its measured conversions | drew 0.0574 (30 of 500 treated users converted) | true",
			"new-arrivals | thompson sampling: a conversion rate drawn from its measured conversions | drew 0.3816 (0 of 0 treated users converted) | true",
		}
		if !slices.Equal(draws, want) {
			t.Errorf("draws\n got %q\nwant %q", draws, want)
		}
		// A user who spent 1,000 gets vip-banner: nothing is drawn.
		vip := build(t, docNow, profile.Event{Type: "purchase", Value: 1000, OccurredAt: docNow.Add(-time.Hour)})
		d = r.Decide(vip, Request{UserID: "u1", Channel: "web", Sampler: s, Explain: true}, docNow)
		if d.Verdict != VerdictSend || d.Offer.ID != "vip-banner" {
			t.Errorf("big spender: %v %+v", d.Verdict, d.Offer)
		}
		for _, st := range d.Trace {
			if strings.HasPrefix(st.Subject, "thompson") {
				t.Errorf("big spender: %+v", st)
			}
		}
		// The winner's control group is held out: ten-off's best draw
		// sends it to its treated users, and nothing to its control.
		s = docSampler{"free-shipping": {0.01, 400, 12}, "ten-off": {0.09, 500, 30}, "new-arrivals": {0.02, 0, 0}}
		seen := map[bool]bool{}
		for i := 0; len(seen) < 2; i++ {
			u := fmt.Sprint("user-", i)
			control := InControl(u, "ten-off", 0.1)
			seen[control] = true
			d := r.Decide(nil, Request{UserID: u, Channel: "web", Sampler: s}, docNow)
			switch {
			case control && (d.Verdict != VerdictNone || !d.Control || d.ControlOffer != "ten-off"):
				t.Errorf("%s in ten-off's control group: %v control %v %q", u, d.Verdict, d.Control, d.ControlOffer)
			case !control && (d.Verdict != VerdictSend || d.Offer.ID != "ten-off"):
				t.Errorf("%s treated: %v %+v", u, d.Verdict, d.Offer)
			}
		}
		// Without counts to draw from, file order.
		if d := r.Decide(nil, Request{UserID: "u1", Channel: "web"}, docNow); d.Verdict != VerdictSend || d.Offer.ID != "free-shipping" {
			t.Errorf("no sampler: %v %+v", d.Verdict, d.Offer)
		}
	},
	"scored": func(t *testing.T, r *Rules) {
		req := docRequest
		d := r.Decide(docUser(t), req, docNow)
		want := []Reason{
			{"phones-coupon", "offer phones-coupon ranked first by score: phones-coupon 1, win-back 0.1"},
			{"phones-coupon", "offer phones-coupon is eligible"},
		}
		if d.Verdict != VerdictSend || d.Offer.ID != "phones-coupon" || !reflect.DeepEqual(d.Reasons, want) {
			t.Errorf("sample user: %v %+v %q", d.Verdict, d.Offer, d.Reasons)
		}
		// Bought 50 days ago, one phone view today: 2.5 against 0.33.
		p := build(t, docNow,
			profile.Event{Type: "purchase", Value: 10, OccurredAt: docNow.Add(-50 * 24 * time.Hour)},
			profile.Event{Type: "view", Category: "phones", OccurredAt: docNow.Add(-time.Hour)})
		if d := r.Decide(p, req, docNow); d.Verdict != VerdictSend || d.Offer.ID != "win-back" {
			t.Errorf("lapsed customer: %v %+v %q", d.Verdict, d.Offer, d.Reasons)
		}
		if d := r.Decide(nil, req, docNow); d.Verdict != VerdictSend || d.Offer.ID != "newsletter" {
			t.Errorf("new user: %v %+v %q", d.Verdict, d.Offer, d.Reasons)
		}
	},
	"features": func(t *testing.T, r *Rules) {
		// The table of "Features", then a user never seen.
		want := []FeatureValue{
			{Name: "views_7d", Value: 4},
			{Name: "distinct_categories_7d", Value: 2},
			{Name: "days_since_purchase", Value: 2},
			{Name: "purchases_90d", Value: 1},
			{Name: "monetary_90d", Value: 59.9},
			{Name: "sessions_24h", Value: 4},
			{Name: "active_days_7d", Value: 4},
			{Name: "has_cart", Value: 1},
			{Name: "avg_order_90d", Value: 59.9},
		}
		if got := r.EvalFeatures(docUser(t), nil, docNow, nil); !reflect.DeepEqual(got, want) {
			t.Errorf("sample user:\n got %+v\nwant %+v", got, want)
		}
		for _, v := range r.EvalFeatures(&profile.Profile{}, nil, docNow, nil) {
			switch v.Name {
			case "days_since_purchase":
				if v.Value != 36500 || v.Err != nil {
					t.Errorf("new user: %+v", v)
				}
			case "avg_order_90d":
				if v.Err == nil || v.Err.Error() != "features.avg_order_90d: got NaN, want a finite number" {
					t.Errorf("new user: %+v", v)
				}
			default:
				if v.Value != 0 || v.Err != nil {
					t.Errorf("new user: %+v", v)
				}
			}
		}
		// The guarded version of avg_order_90d.
		g := mustParse(t, `version: 1
features:
  - name: avg_order_90d
    expr: >-
      profile.count("purchase", duration("90d")) == 0 ? 0.0 :
      profile.monetary(duration("90d")) / double(profile.count("purchase", duration("90d")))
`)
		if v := g.EvalFeatures(nil, nil, docNow, nil); v[0].Value != 0 || v[0].Err != nil {
			t.Errorf("guarded, new user: %+v", v)
		}
		if v := g.EvalFeatures(docUser(t), nil, docNow, nil); v[0].Value != 59.9 || v[0].Err != nil {
			t.Errorf("guarded, sample user: %+v", v)
		}
	},
	"seed": func(t *testing.T, r *Rules) {
		p := &profile.Profile{}
		var events []profile.Event
		for i := range 3 {
			events = append(events, profile.Event{ID: fmt.Sprint(i), UserID: "u", Type: "view", Category: "phones",
				OccurredAt: docNow.Add(time.Duration(i) * 10 * time.Minute)})
		}
		out := r.Step(profile.Limits{})(p, events, docNow.Add(time.Hour))
		if len(out.Actions) != 1 || out.Actions[0].EventID != "2" || out.Actions[0].Payload["category"] != "phones" {
			t.Errorf("actions %+v, want one for the third view", out.Actions)
		}
	},
}

// docSampler draws the given rate for an offer, with its treated users
// exposed and converted.
type docSampler map[string]struct {
	rate               float64
	exposed, converted int64
}

func (s docSampler) Sample(id string) (float64, int64, int64) {
	return s[id].rate, s[id].exposed, s[id].converted
}

// TestDocsCompare checks the <!-- compare --> lines of docs/rules.md:
// each starts with a campaign's counts ("210 of 10,000 treated (2.1%), 30
// of 10,000 control (0.3%)"), and the whole line must be what
// formatCompare makes of them.
func TestDocsCompare(t *testing.T) {
	n := 0
	for _, b := range readDocBlocks(t) {
		if b.lang != "text" || b.marker != "compare" {
			continue
		}
		for i, line := range strings.Split(strings.TrimRight(b.text, "\n"), "\n") {
			where := fmt.Sprintf("%s:%d", docsPath, b.line+1+i)
			var treated, control profile.Arm
			var rt, rc string
			if _, err := fmt.Sscanf(strings.ReplaceAll(line, ",", ""), "%d of %d treated %s %d of %d control %s",
				&treated.Converted, &treated.Exposed, &rt, &control.Converted, &control.Exposed, &rc); err != nil {
				t.Errorf("%s: %q: %v", where, line, err)
				continue
			}
			n++
			if got := formatCompare(treated, control); got != line {
				t.Errorf("%s:\n got %s\nwant %s", where, got, line)
			}
		}
	}
	if n < 5 {
		t.Errorf("only %d compare lines in %s", n, docsPath)
	}
}

// formatCompare states the counts of a campaign's groups and what
// Compare makes of them, rounded as docs/rules.md prints them: rates and
// the uplift to 0.1 point, the lift and its interval to 1%, the p-value
// to two significant digits (or "< 0.0001").
func formatCompare(treated, control profile.Arm) string {
	c := Compare(treated, control)
	var b strings.Builder
	fmt.Fprintf(&b, "%s of %s treated (%s%%), %s of %s control (%s%%)",
		thousands(treated.Converted), thousands(treated.Exposed), docPoints(treated.Rate()),
		thousands(control.Converted), thousands(control.Exposed), docPoints(control.Rate()))
	if c.HasUplift {
		fmt.Fprintf(&b, ": uplift %s points", docSigned(docPoints(c.Uplift)))
	}
	if c.HasLift {
		fmt.Fprintf(&b, ", lift %s, 95%% interval %s to %s", docPercent(c.Lift), docPercent(c.LiftLow), docPercent(c.LiftHigh))
	} else {
		b.WriteString(", lift undefined (no control conversion)")
	}
	if c.HasPValue {
		if c.PValue < 0.0001 {
			b.WriteString(", p < 0.0001")
		} else {
			fmt.Fprintf(&b, ", p = %s", strconv.FormatFloat(c.PValue, 'g', 2, 64))
		}
	}
	return b.String()
}

// docPoints is a share in percent (points) to 0.1, without a trailing
// ".0".
func docPoints(x float64) string {
	return strings.TrimSuffix(strconv.FormatFloat(100*x, 'f', 1, 64), ".0")
}

func docSigned(s string) string {
	if strings.HasPrefix(s, "-") {
		return s
	}
	return "+" + s
}

// docPercent is a relative change in whole percent, signed, with
// thousands separated: +2,084%.
func docPercent(x float64) string {
	v := int64(math.Round(100 * x))
	if v < 0 {
		return "-" + thousands(-v) + "%"
	}
	return "+" + thousands(v) + "%"
}

// thousands writes n >= 0 with commas between thousands: 10,000.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
