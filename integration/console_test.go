package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/internal/webdriver"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The console's tokens: an operator's (admin, and what the demo needs), a
// read-only viewer's (console) and a producer's (ingest: no console).
const (
	consoleAdmin    = "console-e2e-admin-secret"
	consoleViewer   = "console-e2e-viewer-secret"
	consoleProducer = "console-e2e-producer-secret"
)

// screenshotDir is where the browser tests leave a screenshot of every
// page for review: $NUDGE_SCREENSHOTS, or build/console-screenshots at the
// repository's root (ignored by git).
func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("NUDGE_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "build", "console-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// page is a browser session on the console of one nudged.
type page struct {
	t    *testing.T
	ctx  context.Context
	s    *webdriver.Session
	base string // http://host:port
	dir  string
}

func (p *page) open(path string) {
	p.t.Helper()
	if err := p.s.Navigate(p.ctx, p.base+path); err != nil {
		p.t.Fatal(err)
	}
}

func (p *page) find(css string) webdriver.Element {
	p.t.Helper()
	e, err := p.s.Find(p.ctx, css)
	if err != nil {
		p.t.Fatalf("%s: %v", css, err)
	}
	return e
}

func (p *page) text(css string) string {
	p.t.Helper()
	s, err := p.find(css).Text(p.ctx)
	if err != nil {
		p.t.Fatalf("%s: %v", css, err)
	}
	return s
}

// waitText waits for an element matching css whose text contains want.
func (p *page) waitText(css, want string) {
	p.t.Helper()
	if _, err := p.s.WaitText(p.ctx, css, want, 15*time.Second); err != nil {
		src, _ := p.s.PageSource(p.ctx)
		p.t.Fatalf("waiting for %q in %s: %v\npage:\n%s", want, css, err, src)
	}
}

func (p *page) typeInto(css, text string) {
	p.t.Helper()
	e := p.find(css)
	if err := e.Clear(p.ctx); err != nil {
		p.t.Fatal(err)
	}
	if err := e.SendKeys(p.ctx, text); err != nil {
		p.t.Fatal(err)
	}
}

// setValue sets a textarea's value at once (SendKeys of a whole rules
// file is slow, and auto-indenting editors would mangle it; this one is a
// plain textarea).
func (p *page) setValue(css, text string) {
	p.t.Helper()
	if _, err := p.s.Execute(p.ctx, `document.querySelector(arguments[0]).value = arguments[1]`, css, text); err != nil {
		p.t.Fatal(err)
	}
}

func (p *page) click(css string) {
	p.t.Helper()
	if err := p.find(css).Click(p.ctx); err != nil {
		p.t.Fatalf("click %s: %v", css, err)
	}
}

// shot saves a screenshot of the page as name.png, after checking that
// the page fits the window's width (1280 px): readable without scrolling
// sideways.
func (p *page) shot(name string) {
	p.t.Helper()
	w, err := p.s.Execute(p.ctx, `return [document.documentElement.scrollWidth, window.innerWidth]`)
	if err != nil {
		p.t.Fatal(err)
	}
	var widths [2]int
	if err := json.Unmarshal(w, &widths); err != nil || widths[1] == 0 || widths[0] > widths[1] {
		p.t.Errorf("%s: the page is %d px wide in a %d px window (%v)", name, widths[0], widths[1], err)
	}
	png, err := p.s.Screenshot(p.ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// signIn signs in with token through the form, from path (signed out, a
// page sends the browser to sign in, and back after).
func (p *page) signIn(path, token string) {
	p.t.Helper()
	p.open(path)
	p.waitText("h1", "Sign in")
	p.typeInto("#token", token)
	p.click("#login button[type=submit]")
}

// noCSPViolations fails the test if the browser reported a blocked script,
// style or connection (the console must live within its own policy).
func (p *page) noCSPViolations() {
	p.t.Helper()
	logs, err := p.s.BrowserLog(p.ctx)
	if err != nil {
		p.t.Fatalf("reading the browser's log (for CSP violations): %v", err)
	}
	for _, l := range logs {
		if strings.Contains(l.Message, "Content Security Policy") || strings.Contains(l.Message, "Refused to") {
			p.t.Errorf("browser: %s", l.Message)
		}
	}
}

// The console, in Debian's chromium driven by chromedriver, against a
// built nudged on a real redis-server, after the demo's events: sign-in
// (a wrong token and a producer's refused), the overview's rules version,
// the campaigns page's counts equal to GetCampaignReport's, the demo
// shopper's profile and an explained decision, a compile error with its
// line in the playground, an action arriving on the live page, and a
// viewer token that cannot erase. Screenshots of every page go to
// screenshotDir.
func TestConsoleInBrowser(t *testing.T) {
	rs := redistest.Start(t)
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf(`tokens:
- {name: operator, secret: %s, roles: [admin, ingest, decide, explain]}
- {name: viewer, secret: %s, roles: [console]}
- {name: producer, secret: %s, roles: [ingest]}
`, consoleAdmin, consoleViewer, consoleProducer)), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNudged(t, buildNudged(t), "--redis-addr", rs.Addr, "--auth-token-file", tokens, "--audit-sample", "1")

	// The demo's scripted shopper and a small crowd, as make demo plays them.
	const shopper = "demo-shopper-e2e"
	demo := exec.Command(buildCommand(t, "nudge-demo"), "--addr", n.addr, "--token", consoleAdmin, "--insecure", "--wait", "15s", "--user", shopper, "--crowd", "40")
	if out, err := demo.CombinedOutput(); err != nil {
		t.Fatalf("nudge-demo: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	drv, err := webdriver.Start(ctx, webdriver.Options{})
	if err != nil {
		t.Fatalf("%v (the console's browser tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver)", err)
	}
	defer drv.Close()
	s, err := drv.NewSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := &page{t: t, ctx: ctx, s: s, base: "http://" + n.http, dir: screenshotDir(t)}
	api := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+consoleAdmin)
	conn := dial(t, n.addr)
	admin := nudgev1.NewAdminServiceClient(conn)

	// A wrong token, and a token without a console role, are refused.
	p.signIn("/console/login", "not-a-token")
	p.waitText("#error", "Unknown token")
	p.shot("01-sign-in-refused")
	p.signIn("/console/login", consoleProducer)
	p.waitText("#error", "needs admin or console")

	// Sign in from a page: back to it, then the overview.
	p.signIn("/console/campaigns", consoleAdmin)
	p.waitText("h1", "Campaigns")
	p.open("/console/")
	rules, err := admin.GetRules(api, &nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	p.waitText("#rules-version", rules.GetVersion())
	p.waitText("#who", "operator")
	cookies, err := s.Cookies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cookies {
		if c.Name == "nudge_console" && (!c.HTTPOnly || c.SameSite != "Strict" || strings.Contains(c.Value, consoleAdmin)) {
			t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, not the token", c)
		}
	}
	p.shot("02-overview")

	// By keyboard: the first Tab reaches the skip link, a few more the
	// campaigns link, and Enter follows it.
	active := func() string {
		v, err := s.Execute(ctx, `return document.activeElement.textContent.trim()`)
		if err != nil {
			t.Fatal(err)
		}
		var text string
		_ = json.Unmarshal(v, &text)
		return text
	}
	if err := s.PressKeys(ctx, webdriver.KeyTab); err != nil {
		t.Fatal(err)
	}
	if got := active(); got != "Skip to content" {
		t.Errorf("the first Tab focuses %q, want the skip link", got)
	}
	for range 5 {
		if active() == "Campaigns" {
			break
		}
		if err := s.PressKeys(ctx, webdriver.KeyTab); err != nil {
			t.Fatal(err)
		}
	}
	if got := active(); got != "Campaigns" {
		t.Fatalf("Tab did not reach the campaigns link (focus on %q)", got)
	}
	if err := s.PressKeys(ctx, webdriver.KeyEnter); err != nil {
		t.Fatal(err)
	}
	p.waitText("h1", "Campaigns")

	// Campaigns: the coupon trigger's counts are GetCampaignReport's.
	p.open("/console/campaigns")
	const coupon = "category-interest-coupon"
	rep, err := admin.GetCampaignReport(api, &nudgev1.GetCampaignReportRequest{CampaignId: coupon})
	if err != nil {
		t.Fatal(err)
	}
	if rep.GetTreated().GetExposedUsers() == 0 {
		t.Fatalf("the demo exposed nobody to %s: %v", coupon, rep)
	}
	row := "#campaign-" + coupon
	for css, want := range map[string]uint64{
		row + " .treated-exposed":   rep.GetTreated().GetExposedUsers(),
		row + " .treated-converted": rep.GetTreated().GetConvertedUsers(),
		row + " .control-exposed":   rep.GetControl().GetExposedUsers(),
		row + " .control-converted": rep.GetControl().GetConvertedUsers(),
	} {
		if got := p.text(css); got != strconv.FormatUint(want, 10) {
			t.Errorf("%s: the page shows %q, GetCampaignReport %d", css, got, want)
		}
	}
	// The offer with a control group has its lift drawn with an interval.
	p.find("#campaign-cart-reminder svg.lift")
	p.shot("03-campaigns")

	// A user: the demo shopper's profile and an explained decision.
	p.open("/console/user")
	p.typeInto("#id", shopper)
	p.click("#lookup button[type=submit]")
	p.waitText("#profile-user", shopper)
	prof, err := nudgev1.NewProfileServiceClient(conn).GetProfile(api, &nudgev1.GetProfileRequest{UserId: shopper})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.text("#profile-version"); got != strconv.FormatUint(prof.GetProfile().GetVersion(), 10) {
		t.Errorf("profile version on the page %q, GetProfile %d", got, prof.GetProfile().GetVersion())
	}
	p.waitText("#counts", "view")
	p.waitText("#decision-sms summary", "sms")
	p.click("#decision-sms summary")
	p.waitText("#decision-sms .trace", "phones-coupon")
	p.find("#erase") // an operator may erase
	p.shot("04-user")

	// The playground: a copy of the rules in force to edit, then a rules
	// file with an error, reported with its line.
	p.open("/console/playground")
	p.click("#load-rules")
	if err := webdriver.WaitFor(ctx, 15*time.Second, "the rules in force in the editor", func() (bool, error) {
		v, err := p.find("#rules").Property(ctx, "value")
		return strings.Contains(string(v), "category-interest-coupon"), err
	}); err != nil {
		t.Fatal(err)
	}
	p.setValue("#rules", "version: 1\ntriggers:\n  - id: broken\n    on: [view]\n    when: profile.count(\"view\" >= 3\n    action: {channel: sms, template: t}\n")
	p.setValue("#event", `{"event_id": "e1", "user_id": "u1", "type": "view", "category": "phones", "occurred_at": "`+time.Now().UTC().Format(time.RFC3339)+`"}`)
	p.click("#run")
	p.waitText(".problems", "line 5")
	p.shot("05-playground-error")
	// The rules in force (an empty editor), a history of two phone views
	// and a third: the coupon fires, and each channel's decision is shown.
	p.open("/console/playground")
	at := func(ago time.Duration) string { return time.Now().Add(-ago).UTC().Format(time.RFC3339) }
	p.setValue("#history", `{"events": [
  {"event_id": "h1", "user_id": "pg-user", "type": "view", "category": "phones", "occurred_at": "`+at(20*time.Minute)+`"},
  {"event_id": "h2", "user_id": "pg-user", "type": "view", "category": "phones", "occurred_at": "`+at(10*time.Minute)+`"}]}`)
	p.setValue("#event", `{"event_id": "e3", "user_id": "pg-user", "type": "view", "category": "phones", "occurred_at": "`+at(time.Minute)+`"}`)
	p.click("#run")
	p.waitText("#event-status", "applied")
	p.waitText("#actions", coupon)
	p.waitText("#pg-decision-sms summary", "phones-coupon")
	p.shot("06-playground-fires")

	// Live actions: an event that fires the coupon appears as it happens.
	p.open("/console/live?channel=sms")
	p.waitText("#live-status", "Following")
	ingest := nudgev1.NewIngestServiceClient(conn)
	now := time.Now()
	var events []*nudgev1.Event
	for i := range 3 {
		events = append(events, &nudgev1.Event{EventId: fmt.Sprintf("live-%d", i), UserId: "live-shopper", Type: "view", Category: "cameras",
			OccurredAt: timestamppb.New(now.Add(time.Duration(i-3) * time.Minute))})
	}
	if _, err := ingest.Publish(api, &nudgev1.PublishRequest{Events: events}); err != nil {
		t.Fatal(err)
	}
	p.waitText("#live tbody", coupon)
	p.waitText("#live tbody", "live-shopper")
	p.shot("07-live-actions")
	p.noCSPViolations()

	// Erase: the operator types the user id and confirms; the profile is
	// gone (DeleteProfile through the console's in-process call).
	const erased = "demo-crowd-001"
	p.open("/console/user?id=" + erased)
	p.waitText("#profile-user", erased)
	p.typeInto("#confirm", erased)
	if _, err := s.Execute(ctx, `window.confirm = () => true`); err != nil { // the dialog's OK
		t.Fatal(err)
	}
	p.click("#erase button[type=submit]")
	p.waitText("#erased", "profile erased")
	if _, err := nudgev1.NewProfileServiceClient(conn).GetProfile(api, &nudgev1.GetProfileRequest{UserId: erased}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetProfile after the erase: %v, want NOT_FOUND", err)
	}
	p.shot("08-user-erased")

	// Sign out; a viewer token sees the user but has no erase button.
	p.open("/console/")
	p.click(".who button[type=submit]")
	p.waitText("h1", "Sign in")
	p.signIn("/console/", consoleViewer)
	p.waitText("#who", "viewer")
	p.open("/console/user?id=" + shopper)
	p.waitText("#profile-user", shopper)
	if _, err := s.Find(ctx, "#erase"); err == nil {
		t.Error("a viewer (console role) is offered the erase button")
	}
	p.shot("09-user-as-viewer")
	// A viewer who posts the erase anyway (with the session's CSRF token,
	// from the sign-out form) is refused by the server: DeleteProfile
	// needs admin.
	code, err := s.Execute(ctx, `const body = new URLSearchParams({csrf: document.querySelector("input[name=csrf]").value, id: arguments[0], confirm: arguments[0]});
return fetch("/console/user/erase", {method: "POST", body}).then(r => r.status);`, shopper)
	if err != nil || string(code) != "403" {
		t.Fatalf("a viewer's erase: status %s, %v; want 403", code, err)
	}
	if _, err := nudgev1.NewProfileServiceClient(conn).GetProfile(api, &nudgev1.GetProfileRequest{UserId: shopper}); err != nil {
		t.Fatalf("the shopper's profile after a viewer's erase: %v", err)
	}
}
