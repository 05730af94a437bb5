package console

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"ago":     relTime,
	"pct":     pct,
	"verdict": verdictName,
	"evstatus": func(st nudgev1.EventStatus) string {
		return strings.ToLower(strings.TrimPrefix(st.String(), "EVENT_STATUS_"))
	},
}

func verdictName(v nudgev1.Verdict) string {
	return strings.ToLower(strings.TrimPrefix(v.String(), "VERDICT_"))
}

// --- Overview

type overviewData struct {
	Rules     *nudgev1.GetRulesResponse
	RulesErr  string
	Charts    chartsData
	Groups    []groupRow
	GroupsErr string
	Backlog   template.HTML
}

type chartsData struct {
	Enabled bool
	Lines   []template.HTML
	Mix     template.HTML
	Events  template.HTML
	Since   time.Time
}

type groupRow struct {
	*nudgev1.ConsumerGroup
	Kind string // "webhook" or "subscribers"
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := c.rpc(r, s)
	defer cancel()
	var d overviewData
	rules, err := c.admin.GetRules(ctx, &nudgev1.GetRulesRequest{})
	if err != nil {
		_, d.RulesErr = rpcFailure("reading the rules in force failed", err)
	}
	d.Rules = rules
	groups, err := c.admin.ListGroups(ctx, &nudgev1.ListGroupsRequest{})
	switch {
	case status.Code(err) == codes.Unimplemented:
		d.GroupsErr = "This server has no outbox."
	case err != nil:
		_, d.GroupsErr = rpcFailure("listing the consumer groups failed", err)
	default:
		var bars []bar
		for _, g := range groups.GetGroups() {
			row := groupRow{ConsumerGroup: g, Kind: "subscribers"}
			if strings.HasPrefix(g.GetName(), "webhook-") {
				row.Kind = "webhook"
			}
			d.Groups = append(d.Groups, row)
			bars = append(bars, bar{Label: g.GetName(), Value: float64(g.GetPending() + g.GetUndelivered())})
		}
		d.Backlog = barChart("Actions waiting per group (pending + undelivered)", "actions", bars)
	}
	d.Charts = c.charts()
	c.render(w, r, s, "overview", "Overview", 0, d)
}

// overviewCharts is the charts fragment the overview's script reloads.
func (c *Console) overviewCharts(w http.ResponseWriter, r *http.Request, s *session) {
	var b strings.Builder
	if err := c.pages["overview"].ExecuteTemplate(&b, "charts", c.charts()); err != nil {
		http.Error(w, "rendering the charts failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(b.String()))
}

// charts draws the last hour of this nudged's rates.
func (c *Console) charts() chartsData {
	if c.cfg.Sampler == nil {
		return chartsData{}
	}
	o := c.cfg.Sampler.Overview()
	now := c.cfg.Now()
	const window = time.Hour
	d := chartsData{Enabled: true, Since: o.Since}
	for _, ln := range []struct {
		title, unit string
		s           Series
	}{
		{"Events", "/s", o.Events},
		{"Decisions", "/s", o.Decisions},
		{"Degraded decisions", "%", o.DegradedShare},
		{"Event lag (mean)", "s", o.EventLag},
		{"Actions emitted", "/s", o.Actions},
	} {
		d.Lines = append(d.Lines, lineChart(ln.title, ln.unit, ln.s.Points, window, now))
	}
	d.Lines = slices.Insert(d.Lines, 2, linesChart("Decisions by verdict", "/s", []line{
		{Label: "send", Class: "v-send", Points: o.Send.Points},
		{Label: "hold", Class: "v-hold", Points: o.Hold.Points},
		{Label: "none", Class: "v-none", Points: o.None.Points},
	}, window, now))
	var mix []bar
	for _, v := range slices.Sorted(maps.Keys(o.DecisionsByVerdict)) {
		mix = append(mix, bar{Label: v, Value: float64(o.DecisionsByVerdict[v]), Class: "v-" + v})
	}
	if o.Degraded > 0 {
		mix = append(mix, bar{Label: "degraded (of all)", Value: float64(o.Degraded), Class: "v-degraded"})
	}
	d.Mix = barChart("Decisions by verdict since start", "decisions", mix)
	var ev []bar
	for _, st := range slices.Sorted(maps.Keys(o.EventsByStatus)) {
		ev = append(ev, bar{Label: st, Value: float64(o.EventsByStatus[st]), Class: "s-" + st})
	}
	d.Events = barChart("Events by status since start", "events", ev)
	return d
}

// --- Campaigns

type campaignsData struct {
	Err     string
	Rows    []campaignRow
	Axis    template.HTML
	Funnels []funnelView
}

type campaignRow struct {
	*nudgev1.GetCampaignReportResponse
	Lift template.HTML // the interval bar, empty without a lift
}

type funnelView struct {
	Trigger  string
	Outcomes []string
	Steps    []funnelStepView
	Chart    template.HTML
}

type funnelStepView struct {
	ID     string
	Counts []int64
}

func (c *Console) campaigns(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := c.rpc(r, s)
	defer cancel()
	var d campaignsData
	res, err := c.admin.ListCampaignReports(ctx, &nudgev1.ListCampaignReportsRequest{})
	switch {
	case status.Code(err) == codes.Unimplemented:
		d.Err = "This server does not measure campaigns."
	case err != nil:
		_, d.Err = rpcFailure("reading the campaign reports failed", err)
	}
	var ivs [][2]float64
	for _, rep := range res.GetReports() {
		if rep.LiftCiLow != nil && rep.LiftCiHigh != nil {
			ivs = append(ivs, [2]float64{rep.GetLiftCiLow(), rep.GetLiftCiHigh()})
		}
	}
	scale := newLiftScale(ivs...)
	d.Axis = liftAxis(scale)
	for _, rep := range res.GetReports() {
		row := campaignRow{GetCampaignReportResponse: rep}
		if rep.Lift != nil && rep.LiftCiLow != nil && rep.LiftCiHigh != nil {
			row.Lift = liftBar(scale, rep.GetLift(), rep.GetLiftCiLow(), rep.GetLiftCiHigh())
		}
		d.Rows = append(d.Rows, row)
	}
	if c.cfg.Sampler != nil {
		d.Funnels = funnelViews(c.cfg.Sampler.Overview().Funnels)
	}
	c.render(w, r, s, "campaigns", "Campaigns", 0, d)
}

// funnelOutcomes are a funnel's columns, in the order a step goes
// through them.
var funnelOutcomes = []string{"scheduled", "deferred", "fired", "cancelled", "dropped", "control"}

func funnelViews(fs []Funnel) []funnelView {
	var out []funnelView
	for _, f := range fs {
		v := funnelView{Trigger: f.Trigger, Outcomes: funnelOutcomes}
		var fired []bar
		for _, st := range f.Steps {
			row := funnelStepView{ID: st.ID}
			for _, o := range funnelOutcomes {
				row.Counts = append(row.Counts, st.Outcomes[o])
			}
			v.Steps = append(v.Steps, row)
			fired = append(fired, bar{Label: st.ID, Value: float64(st.Outcomes["fired"]), Class: "s-applied"})
		}
		v.Chart = barChart("Fired per step", "actions", fired)
		out = append(out, v)
	}
	return out
}

// --- A user

type userData struct {
	ID         string
	Channel    string
	Err        string
	Profile    *nudgev1.Profile
	Windows    []string
	Counts     []countRow
	Timeline   template.HTML
	Timers     []timerRow
	Decisions  []decisionView
	DecideErr  string
	Recent     []audit.Record
	RecentErr  string
	RecentNote string
	MayErase   bool
	Erased     string
	marks      []mark // the timeline's moments, timers added by decide
}

type countRow struct {
	Type, Category string
	Counts         []uint64
}

type decisionView struct {
	Channel  string
	Open     bool
	Decision *nudgev1.Decision
}

type timerRow struct {
	Trigger  string
	Step     int
	Due      time.Time
	Deferred bool
}

func (c *Console) user(w http.ResponseWriter, r *http.Request, s *session) {
	d := userData{ID: strings.TrimSpace(r.FormValue("id")), Channel: r.FormValue("channel"), MayErase: s.may(roleAdmin), Erased: r.FormValue("erased")}
	if d.ID == "" {
		c.render(w, r, s, "user", "A user", 0, d)
		return
	}
	ctx, cancel := c.rpc(r, s)
	defer cancel()
	res, err := c.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: d.ID})
	switch {
	case status.Code(err) == codes.NotFound:
		d.Err = fmt.Sprintf("No profile for %q: nudge has no event of this user (or the profile was erased or expired).", d.ID)
	case err != nil:
		_, d.Err = rpcFailure("reading the profile failed", err)
	default:
		c.fillProfile(&d, res.GetProfile())
	}
	c.decide(ctx, &d)
	c.recent(ctx, &d)
	if d.Profile != nil {
		d.Timeline = timeline(d.marks, c.cfg.Now())
	}
	c.render(w, r, s, "user", "User "+d.ID, 0, d)
}

// fillProfile lays the profile out: counts by window, and its moments on
// a timeline.
func (c *Console) fillProfile(d *userData, p *nudgev1.Profile) {
	d.Profile = p
	var ws []time.Duration
	for _, wc := range p.GetCounts() {
		ws = append(ws, wc.GetWindow().AsDuration())
	}
	slices.Sort(ws)
	ws = slices.Compact(ws)
	for _, w := range ws {
		d.Windows = append(d.Windows, profile.FormatDuration(w)) // 5m, 24h is 1d, 7d: as the rules write them
	}
	rows := map[[2]string]*countRow{}
	var keys [][2]string
	for _, wc := range p.GetCounts() {
		k := [2]string{wc.GetType(), wc.GetCategory()}
		row := rows[k]
		if row == nil {
			row = &countRow{Type: k[0], Category: k[1], Counts: make([]uint64, len(ws))}
			rows[k] = row
			keys = append(keys, k)
		}
		row.Counts[slices.Index(ws, wc.GetWindow().AsDuration())] = wc.GetCount()
	}
	slices.SortFunc(keys, func(a, b [2]string) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	for _, k := range keys {
		d.Counts = append(d.Counts, *rows[k])
	}
	var marks []mark
	for _, typ := range slices.Sorted(maps.Keys(p.GetLastSeen())) {
		marks = append(marks, mark{At: p.GetLastSeen()[typ].AsTime(), Label: "last " + typ, Class: "event"})
	}
	for _, e := range p.GetExposures() {
		l := "exposed to " + e.GetCampaignId() + " (" + e.GetVariant() + ")"
		if e.GetConverted() {
			l += ", converted"
		}
		marks = append(marks, mark{At: e.GetExposedAt().AsTime(), Label: l, Class: "exposure"})
	}
	d.marks = marks
}

// recent reads the user's sampled decisions from the decision log.
func (c *Console) recent(ctx context.Context, d *userData) {
	if c.cfg.Decisions == nil {
		d.RecentNote = "This server keeps no decision log."
		return
	}
	const scan, want = 20000, 20
	recs, err := c.cfg.Decisions.RecentForUser(ctx, d.ID, scan, want)
	if err != nil {
		d.RecentErr = "Reading the decision log failed: " + err.Error()
		return
	}
	d.Recent = recs
	d.RecentNote = fmt.Sprintf("The decision log keeps a sample of decisions (decision.audit_sample); these are the user's among the newest %d.", scan)
}

// --- Erase

func (c *Console) erase(w http.ResponseWriter, r *http.Request, s *session) {
	id := strings.TrimSpace(r.PostFormValue("id"))
	if id == "" || r.PostFormValue("confirm") != id {
		c.fail(w, r, s, http.StatusBadRequest, "To erase a profile, type the user id exactly in the confirmation box.")
		return
	}
	ctx, cancel := c.rpc(r, s)
	defer cancel()
	res, err := c.profiles.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: id})
	if err != nil {
		code, msg := rpcFailure("erasing the profile failed", err)
		if code == http.StatusForbidden {
			msg += " Erasing needs a token with the admin role."
		}
		c.fail(w, r, s, code, msg)
		return
	}
	c.cfg.Log.Info("console: profile erased", "token", s.name, "deleted", res.GetDeleted(), "actions_deleted", res.GetActionsDeleted())
	note := "nothing to erase"
	if res.GetDeleted() {
		note = fmt.Sprintf("profile erased, %d outbox actions removed", res.GetActionsDeleted())
	}
	http.Redirect(w, r, "/console/user?id="+url.QueryEscape(id)+"&erased="+url.QueryEscape(note), http.StatusSeeOther)
}

// --- Live actions

type liveData struct {
	Channel, Trigger string
	Available        bool
}

func (c *Console) live(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, s, "live", "Live actions", 0, liveData{
		Channel: r.FormValue("channel"), Trigger: r.FormValue("trigger"), Available: c.cfg.Actions != nil,
	})
}

// liveStreams bounds the live streams open at once: each holds a Redis
// connection per outbox stream.
const maxLiveStreams = 16

var errTooManyStreams = errors.New("too many live streams")

// liveAction is one action as the live page's script receives it.
type liveAction struct {
	ID        string    `json:"id"`
	At        time.Time `json:"at"`
	User      string    `json:"user"`
	Trigger   string    `json:"trigger"`
	Channel   string    `json:"channel"`
	Template  string    `json:"template"`
	Error     string    `json:"error,omitempty"`
	Payload   string    `json:"payload,omitempty"`
	EventID   string    `json:"event_id,omitempty"`
	DueAt     time.Time `json:"due_at,omitzero"`
	Triggered time.Time `json:"triggered_at,omitzero"`
}

// liveStream sends the actions written to the outbox from now on, as
// server-sent events, filtered by channel and trigger (a trigger's
// journey steps included), until the browser leaves.
func (c *Console) liveStream(w http.ResponseWriter, r *http.Request, s *session) {
	if c.cfg.Actions == nil {
		http.Error(w, "this server has no outbox", http.StatusNotImplemented)
		return
	}
	if c.liveOpen.Add(1) > maxLiveStreams {
		c.liveOpen.Add(-1)
		http.Error(w, errTooManyStreams.Error()+": close another live page", http.StatusServiceUnavailable)
		return
	}
	defer c.liveOpen.Add(-1)
	channel, trigger := r.FormValue("channel"), r.FormValue("trigger")
	ids := map[string]bool{trigger: true} // the trigger and its journey's steps
	if c.cfg.Campaigns != nil {
		for _, cp := range c.cfg.Campaigns() {
			if cp.Journey == trigger {
				ids[cp.ID] = true
			}
		}
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": live actions\n\n")
	_ = rc.Flush()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(c.closed, cancel)() // Close ends the stream
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	entries := make(chan delivery.TailEntry, 256)
	tailErr := make(chan error, 1)
	go func() {
		tailErr <- c.cfg.Actions.Tail(ctx, func(e delivery.TailEntry) error {
			select {
			case entries <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-tailErr:
			if err != nil && ctx.Err() == nil {
				c.cfg.Log.Warn("console: live actions: tailing the outbox failed", "err", err)
				_, _ = fmt.Fprintf(w, "event: failure\ndata: %s\n\n", jsonString("tailing the outbox failed: "+err.Error()))
				_ = rc.Flush()
			}
			return
		case <-beat.C:
			_, _ = fmt.Fprint(w, ": still here\n\n")
		case e := <-entries:
			a := e.Action
			if channel != "" && a.Channel != channel {
				continue
			}
			if trigger != "" && !ids[a.TriggerID] {
				continue
			}
			la := liveAction{ID: a.ID, User: a.UserID, Trigger: a.TriggerID, Channel: a.Channel, Template: a.Template,
				EventID: a.EventID, DueAt: a.DueAt, Triggered: a.TriggeredAt, At: c.cfg.Now()}
			if len(a.Payload) > 0 {
				p, _ := json.Marshal(a.Payload)
				la.Payload = string(p)
			}
			if e.Err != nil {
				la.Error = e.Err.Error()
			}
			b, _ := json.Marshal(la)
			_, _ = fmt.Fprintf(w, "data: %s\n\n", b)
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
