package webdriver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// One chromedriver, one browser and one test site for the whole test
// binary: a session costs about a second, a page load milliseconds.
var (
	site *httptest.Server

	driver    *Driver
	driverErr error

	sessionOnce sync.Once
	session     *Session
	sessionErr  error
)

func TestMain(m *testing.M) {
	site = httptest.NewServer(siteHandler())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	driver, driverErr = Start(ctx, Options{})
	cancel()
	code := m.Run()
	if driver != nil {
		if err := closeCleanly(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: Driver.Close:", err)
			code = 1
		}
	}
	site.Close()
	os.Exit(code)
}

// closeCleanly closes the shared Driver, with the shared session still
// open, and checks that nothing outlives it: not the session's profile,
// not the Driver's directory, not chromedriver, not a chromium process.
// It runs once per test binary, as a session costs a second.
func closeCleanly() error {
	if err := driver.Close(); err != nil {
		return err
	}
	if groupAlive(driver.cmd) {
		return errors.New("a process of chromedriver's group outlived Close")
	}
	dirs := []string{driver.home}
	if session != nil {
		dirs = append(dirs, session.profile)
		if err := session.Close(); err != nil {
			return fmt.Errorf("Session.Close after Driver.Close: %w", err)
		}
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s outlived Close: %v", dir, err)
		}
	}
	if _, err := driver.NewSession(context.Background()); err == nil {
		return errors.New("NewSession after Close succeeded")
	}
	return driver.Close()
}

// browser returns the shared session, failing (never skipping) the test
// when chromium or chromedriver is missing.
func browser(t *testing.T) *Session {
	t.Helper()
	if driverErr != nil {
		t.Fatalf("these tests drive a real chromium: %v", driverErr)
	}
	sessionOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		session, sessionErr = driver.NewSession(ctx)
	})
	if sessionErr != nil {
		t.Fatalf("new session: %v", sessionErr)
	}
	return session
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The strict policy the console serves: nothing inline, nothing from
// elsewhere.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'"

const indexHTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>Console test</title>
<link rel="stylesheet" href="/app.css"><script src="/app.js" defer></script></head>
<body>
<h1>Console</h1>
<form id="greet" method="post" action="/echo">
  <label for="name">Name</label>
  <input id="name" name="name" value="preset">
  <button id="send" type="submit">Send</button>
</form>
<button id="count" type="button">Count</button>
<p id="clicks">0 clicks</p>
</body></html>`

// appJS counts clicks and shows the count a moment later, so that a test
// must wait for it; data-ready tells that it ran under the CSP.
const appJS = `"use strict";
var clicks = 0;
document.getElementById("count").addEventListener("click", function () {
  var n = ++clicks;
  setTimeout(function () { document.getElementById("clicks").textContent = n + " clicks"; }, 100);
});
document.body.setAttribute("data-ready", "yes");
`

const appCSS = `body { font-family: sans-serif }
`

func siteHandler() http.Handler {
	mux := http.NewServeMux()
	page := func(w http.ResponseWriter, body string) {
		w.Header().Set("Content-Security-Policy", csp)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, body)
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "s3cret", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		http.SetCookie(w, &http.Cookie{Name: "theme", Value: "dark", Path: "/", SameSite: http.SameSiteLaxMode})
		page(w, indexHTML)
	})
	mux.HandleFunc("GET /app.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		fmt.Fprint(w, appJS)
	})
	mux.HandleFunc("GET /app.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		fmt.Fprint(w, appCSS)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		page(w, `<!doctype html><html><head><meta charset="utf-8"><title>Echo</title></head><body>`+
			`<p id="echo">Hello, `+html.EscapeString(r.PostFormValue("name"))+`</p></body></html>`)
	})
	// An inline script: the policy blocks it, and the browser says so.
	mux.HandleFunc("GET /inline", func(w http.ResponseWriter, r *http.Request) {
		page(w, `<!doctype html><html><head><meta charset="utf-8"><title>inline</title></head><body>`+
			`<script>document.title = "ran"</script></body></html>`)
	})
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// openIndex returns the shared session, on the test site's index once its
// script ran, and a context for the test's commands.
func openIndex(t *testing.T) (*Session, context.Context) {
	t.Helper()
	s := browser(t)
	ctx := testContext(t)
	if err := s.Navigate(ctx, site.URL+"/"); err != nil {
		t.Fatal(err)
	}
	body := find(t, ctx, s, "body")
	err := WaitFor(ctx, 5*time.Second, "app.js to run", func() (bool, error) {
		v, _, err := body.Attribute(ctx, "data-ready")
		return v == "yes", err
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, ctx
}

// find returns the first element matching css, failing the test if none.
func find(t *testing.T, ctx context.Context, s *Session, css string) Element {
	t.Helper()
	el, err := s.Find(ctx, css)
	if err != nil {
		t.Fatal(err)
	}
	return el
}

func TestFormRoundTrip(t *testing.T) {
	s, ctx := openIndex(t)
	if title, err := s.Title(ctx); err != nil || title != "Console test" {
		t.Fatalf("Title = %q, %v; want Console test", title, err)
	}
	if u, err := s.URL(ctx); err != nil || u != site.URL+"/" {
		t.Fatalf("URL = %q, %v; want %s/", u, err, site.URL)
	}
	// The DOM as it is now: with the attribute app.js set.
	if src, err := s.PageSource(ctx); err != nil || !strings.Contains(src, `data-ready="yes"`) {
		t.Fatalf("PageSource = %.200q, %v; want the body app.js marked", src, err)
	}

	name := find(t, ctx, s, "#name")
	if err := name.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if err := name.SendKeys(ctx, "Ada <b>"); err != nil {
		t.Fatal(err)
	}
	// The property is what the input holds now; the attribute is the
	// markup's.
	var value string
	if v, err := name.Property(ctx, "value"); err != nil || json.Unmarshal(v, &value) != nil || value != "Ada <b>" {
		t.Fatalf(`Property(value) = %s, %v; want "Ada <b>"`, v, err)
	}
	if v, ok, err := name.Attribute(ctx, "value"); err != nil || !ok || v != "preset" {
		t.Fatalf("Attribute(value) = %q, %v, %v; want preset, true", v, ok, err)
	}
	if _, ok, err := name.Attribute(ctx, "data-missing"); err != nil || ok {
		t.Fatalf("Attribute(data-missing) ok = %v, %v; want false", ok, err)
	}

	send := find(t, ctx, s, "#send")
	if err := send.Click(ctx); err != nil {
		t.Fatal(err)
	}
	echo, err := s.WaitText(ctx, "#echo", "Hello, Ada <b>", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if text, err := echo.Text(ctx); err != nil || text != "Hello, Ada <b>" {
		t.Fatalf("echo text = %q, %v", text, err)
	}
	if u, err := s.URL(ctx); err != nil || u != site.URL+"/echo" {
		t.Fatalf("URL after submit = %q, %v", u, err)
	}
	// The old page's elements are gone with it.
	if _, err := name.Text(ctx); !errors.Is(err, ErrStaleElement) {
		t.Fatalf("Text of an element of the previous page: %v; want ErrStaleElement", err)
	}
}

func TestClickAndWait(t *testing.T) {
	s, ctx := openIndex(t)
	count := find(t, ctx, s, "#count")
	for range 2 {
		if err := count.Click(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.WaitText(ctx, "#clicks", "2 clicks", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	buttons, err := s.FindAll(ctx, "button")
	if err != nil || len(buttons) != 2 {
		t.Fatalf("FindAll(button) = %d elements, %v; want 2", len(buttons), err)
	}

	_, err = s.WaitText(ctx, "#clicks", "never", 200*time.Millisecond)
	if !errors.Is(err, ErrWaitTimeout) || !strings.Contains(err.Error(), `["2 clicks"]`) {
		t.Fatalf("WaitText for a text that never comes: %v; want ErrWaitTimeout listing the text seen", err)
	}
}

func TestExecute(t *testing.T) {
	s, ctx := openIndex(t)
	count := find(t, ctx, s, "#count")
	for _, c := range []struct {
		name   string
		script string
		args   []any
		want   string
	}{
		{"arguments", "return arguments[0] + arguments[1]", []any{2, 3}, "5"},
		{"element argument", "return arguments[0].id", []any{count}, `"count"`},
		{"page state", "return [document.title, document.body.dataset.ready]", nil, `["Console test","yes"]`},
		{"no return", "document.title", nil, "null"},
		// The page's policy forbids eval; WebDriver's scripts are not the page's.
		{"outside the CSP", "return eval('1+1')", nil, "2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.Execute(ctx, c.script, c.args...)
			if err != nil || string(got) != c.want {
				t.Fatalf("Execute = %s, %v; want %s", got, err, c.want)
			}
		})
	}
	if _, err := s.Execute(ctx, "throw new Error('boom')"); !errors.Is(err, ErrJavaScript) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Execute of a throwing script: %v; want ErrJavaScript with its message", err)
	}
}

func TestScreenshot(t *testing.T) {
	s, ctx := openIndex(t)
	b, err := s.Screenshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot %.8q...: %v", b, err)
	}
	// The viewport of a 1280x800 window: headless chromium has no toolbar,
	// but leave room for one.
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w != 1280 || h < 600 || h > 800 {
		t.Fatalf("screenshot is %dx%d; want the 1280x800 window's viewport", w, h)
	}
}

func TestCookies(t *testing.T) {
	s, ctx := openIndex(t)
	cookies, err := s.Cookies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]Cookie)
	for _, c := range cookies {
		byName[c.Name] = c
	}
	want := []Cookie{
		{Name: "session", Value: "s3cret", Path: "/", HTTPOnly: true, SameSite: "Strict"},
		{Name: "theme", Value: "dark", Path: "/", HTTPOnly: false, SameSite: "Lax"},
	}
	for _, w := range want {
		got, ok := byName[w.Name]
		got.Domain = "" // 127.0.0.1, or localhost, as the browser sees it
		if !ok || got != w {
			t.Errorf("cookie %s = %+v (present %v); want %+v", w.Name, got, ok, w)
		}
	}
	// HttpOnly holds: the page's scripts cannot read the session cookie.
	got, err := s.Execute(ctx, "return document.cookie")
	if err != nil || string(got) != `"theme=dark"` {
		t.Fatalf("document.cookie = %s, %v; want only theme=dark", got, err)
	}
}

func TestFindMissing(t *testing.T) {
	s, ctx := openIndex(t)
	_, err := s.Find(ctx, "#nope")
	if !errors.Is(err, ErrNoSuchElement) {
		t.Fatalf("Find(#nope): %v; want ErrNoSuchElement", err)
	}
	var werr *Error
	if !errors.As(err, &werr) || werr.Code != "no such element" || werr.Status != http.StatusNotFound {
		t.Fatalf("Find(#nope): %#v; want an *Error with code no such element, HTTP 404", werr)
	}
	if msg := err.Error(); !strings.Contains(msg, `find "#nope"`) || strings.Contains(msg, "Session info") {
		t.Fatalf("error message %q: want the selector, without chromedriver's session info", msg)
	}
	els, err := s.FindAll(ctx, "#nope")
	if err != nil || len(els) != 0 {
		t.Fatalf("FindAll(#nope) = %d, %v; want none, no error", len(els), err)
	}
}

func TestBrowserLogReportsCSPViolations(t *testing.T) {
	s, ctx := openIndex(t)
	logged, err := s.BrowserLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range logged {
		if e.Level == "SEVERE" {
			t.Errorf("the index page logged %s %s: %s", e.Level, e.Source, e.Message)
		}
	}

	if err := s.Navigate(ctx, site.URL+"/inline"); err != nil {
		t.Fatal(err)
	}
	var seen []LogEntry
	err = WaitFor(ctx, 5*time.Second, "a CSP violation in the browser log", func() (bool, error) {
		entries, err := s.BrowserLog(ctx)
		seen = append(seen, entries...)
		for _, e := range seen {
			if e.Level == "SEVERE" && strings.Contains(e.Message, "Content Security Policy") {
				return true, nil
			}
		}
		return false, err
	})
	if err != nil {
		t.Fatalf("%v; log: %+v", err, seen)
	}
	if title, err := s.Title(ctx); err != nil || title != "inline" {
		t.Fatalf("Title = %q, %v; the inline script ran despite the policy", title, err)
	}
}

func TestWaitFor(t *testing.T) {
	t.Run("timeout names the wait and the last error", func(t *testing.T) {
		calls := 0
		err := WaitFor(context.Background(), 150*time.Millisecond, "the impossible", func() (bool, error) {
			calls++
			return false, fmt.Errorf("attempt %d: still loading", calls)
		})
		if !errors.Is(err, ErrWaitTimeout) {
			t.Fatalf("err = %v; want ErrWaitTimeout", err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "waiting for the impossible") || !strings.Contains(msg, fmt.Sprintf("attempt %d: still loading", calls)) {
			t.Fatalf("message %q: want what and the last error", msg)
		}
	})
	t.Run("holds after a while", func(t *testing.T) {
		calls := 0
		err := WaitFor(context.Background(), 5*time.Second, "the third call", func() (bool, error) {
			calls++
			return calls == 3, nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("err = %v after %d calls; want nil after 3", err, calls)
		}
	})
	t.Run("context ends first", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		err := WaitFor(ctx, time.Minute, "the end of the minute", func() (bool, error) { return false, nil })
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "the end of the minute") {
			t.Fatalf("err = %v; want the context's deadline, naming the wait", err)
		}
	})
}

func TestMissingBinariesFail(t *testing.T) {
	// Neither the environment nor PATH may find the real ones.
	t.Setenv("NUDGE_CHROMEDRIVER", "")
	t.Setenv("NUDGE_CHROMIUM", "")
	t.Setenv("PATH", t.TempDir())
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		opt  Options
	}{
		{"no chromedriver in PATH", Options{}},
		{"no such driver", Options{Driver: filepath.Join(t.TempDir(), "chromedriver")}},
		{"no such browser", Options{Driver: self, Browser: filepath.Join(t.TempDir(), "chromium")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := Start(context.Background(), c.opt)
			if err == nil {
				d.Close()
				t.Fatal("Start succeeded")
			}
			if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "chromium and chromium-driver") {
				t.Fatalf("err = %v; want ErrNotInstalled naming the Debian packages", err)
			}
		})
	}
}

// An Element marshals as a W3C element reference.
func TestElementJSON(t *testing.T) {
	b, err := json.Marshal(Element{id: "abc"})
	if err != nil || string(b) != `{"element-6066-11e4-a52e-4f735466cecf":"abc"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
}

// PressKeys types at the focus: Tab moves it from the field to the
// button, Enter presses the button.
func TestPressKeys(t *testing.T) {
	s, ctx := openIndex(t)
	name := find(t, ctx, s, "#name")
	if err := name.Click(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.PressKeys(ctx, KeyTab); err != nil {
		t.Fatal(err)
	}
	if id, err := s.Execute(ctx, `return document.activeElement.id`); err != nil || string(id) != `"send"` {
		t.Fatalf("focus after Tab: %s, %v; want send", id, err)
	}
	if err := s.PressKeys(ctx, KeyEnter); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitText(ctx, "#echo", "Hello, preset", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}
