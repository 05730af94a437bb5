package webdriver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"
)

// browserArgs are the chromium switches of every session, before
// Options.Args and the profile directory.
var browserArgs = []string{
	"--headless=new",
	// Chromium refuses to start as root with its sandbox on, and CI runs
	// as root; the pages under test are our own.
	"--no-sandbox",
	"--disable-gpu",
	"--window-size=1280,800",
	// Docker gives /dev/shm 64 MiB, too little for chromium's shared
	// memory: use the temp dir instead.
	"--disable-dev-shm-usage",
	// chromedriver talks to chromium over a pipe, not a DevTools port on
	// localhost that any local process could use; and chromium exits when
	// the pipe closes, so a chromedriver killed without Close (the test
	// binary died) leaves no browser behind.
	"--remote-debugging-pipe",
	// Nothing but the page under test reaches the network: no component,
	// safe-browsing or variations updates, no sync, metrics, crash reports,
	// translation or optimisation hints, no first-run tasks.
	"--disable-background-networking",
	"--disable-component-update",
	"--disable-sync",
	"--disable-default-apps",
	"--disable-extensions",
	"--disable-client-side-phishing-detection",
	"--disable-domain-reliability",
	"--disable-breakpad",
	"--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
	"--metrics-recording-only",
	"--safebrowsing-disable-auto-update",
	"--no-first-run",
	"--no-default-browser-check",
	"--no-pings",
	"--password-store=basic",
	"--mute-audio",
}

// Session is one browser: a WebDriver session of chromedriver with its own
// headless chromium and a fresh profile directory, until Close.
type Session struct {
	d       *Driver
	path    string // "/session/{id}"
	profile string // chromium's --user-data-dir, removed by Close

	closeOnce sync.Once
	closeErr  error
}

// NewSession starts a headless chromium (Options.Browser) in a 1280x800
// window, without sandbox (CI runs as root), GPU or /dev/shm, with its
// background traffic (updates, sync, metrics, safe browsing, translation)
// off, then Options.Args, a new temporary profile, and the browser log on
// (see BrowserLog). The session must be closed; Driver.Close closes those
// left open.
func (d *Driver) NewSession(ctx context.Context) (*Session, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, errors.New("webdriver: new session: driver closed")
	}
	profile, err := os.MkdirTemp(d.home, "profile-")
	if err != nil {
		return nil, fmt.Errorf("webdriver: new session: %w", err)
	}
	args := slices.Concat(browserArgs, d.opt.Args, []string{"--user-data-dir=" + profile})
	pageLoad := d.opt.PageLoadTimeout.Milliseconds()
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{
			"binary": d.browser,
			"args":   args,
		},
		// chromedriver's extension: keep the browser console for BrowserLog.
		"goog:loggingPrefs": map[string]string{"browser": "ALL"},
		"timeouts":          map[string]int64{"implicit": 0, "pageLoad": pageLoad, "script": pageLoad},
	}}}
	var created struct {
		SessionID string `json:"sessionId"`
	}
	if err := d.do(ctx, http.MethodPost, "/session", caps, &created); err != nil {
		_ = os.RemoveAll(profile)
		return nil, fmt.Errorf("webdriver: new session (chromium %s): %w", d.browser, err)
	}
	s := &Session{d: d, path: "/session/" + created.SessionID, profile: profile}
	d.mu.Lock()
	if d.closed { // Close ran meanwhile and did not see this session
		d.mu.Unlock()
		_ = s.Close()
		return nil, errors.New("webdriver: new session: driver closed")
	}
	d.sessions[s] = struct{}{}
	d.mu.Unlock()
	return s, nil
}

// Close deletes the session, which stops its chromium, and removes its
// profile directory. Calling it again returns the first result.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		var errs []error
		if err := s.do(ctx, http.MethodDelete, "", nil, nil); err != nil {
			errs = append(errs, fmt.Errorf("webdriver: delete session: %w", err))
		}
		errs = append(errs, removeDir(s.profile))
		s.closeErr = errors.Join(errs...)
		s.d.mu.Lock()
		delete(s.d.sessions, s)
		s.d.mu.Unlock()
	})
	return s.closeErr
}

// removeDir removes a profile or the Driver's directory. chromedriver
// returns from deleting a session once chromium has exited; the retries
// are for a helper process still writing its last file.
func removeDir(dir string) error {
	return WaitFor(context.Background(), 2*time.Second, "removal of "+dir, func() (bool, error) {
		err := os.RemoveAll(dir)
		return err == nil, err
	})
}

// do sends a command of this session: path is relative to /session/{id}.
func (s *Session) do(ctx context.Context, method, path string, body, out any) error {
	return s.d.do(ctx, method, s.path+path, body, out)
}

// Navigate loads rawURL and waits for the page to load.
func (s *Session) Navigate(ctx context.Context, rawURL string) error {
	if err := s.do(ctx, http.MethodPost, "/url", map[string]string{"url": rawURL}, nil); err != nil {
		return fmt.Errorf("webdriver: navigate to %s: %w", rawURL, err)
	}
	return nil
}

// URL returns the current page's URL.
func (s *Session) URL(ctx context.Context) (string, error) {
	var u string
	if err := s.do(ctx, http.MethodGet, "/url", nil, &u); err != nil {
		return "", fmt.Errorf("webdriver: current URL: %w", err)
	}
	return u, nil
}

// Title returns the current page's title.
func (s *Session) Title(ctx context.Context) (string, error) {
	var t string
	if err := s.do(ctx, http.MethodGet, "/title", nil, &t); err != nil {
		return "", fmt.Errorf("webdriver: title: %w", err)
	}
	return t, nil
}

// Keys the browser understands in PressKeys (WebDriver's key codes).
const (
	KeyTab   = "\uE004"
	KeyEnter = "\uE007"
)

// PressKeys types keys into whatever has the focus, as a person at the
// keyboard would (WebDriver's actions: each key down, then up), where
// Element.SendKeys first focuses an element.
func (s *Session) PressKeys(ctx context.Context, keys ...string) error {
	type keyAction struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	}
	var acts []keyAction
	for _, k := range keys {
		acts = append(acts, keyAction{"keyDown", k}, keyAction{"keyUp", k})
	}
	body := map[string]any{"actions": []map[string]any{{"type": "key", "id": "keyboard", "actions": acts}}}
	if err := s.do(ctx, http.MethodPost, "/actions", body, nil); err != nil {
		return fmt.Errorf("webdriver: press keys: %w", err)
	}
	return nil
}

// PageSource returns the current DOM serialised as HTML (not the bytes
// the server sent).
func (s *Session) PageSource(ctx context.Context) (string, error) {
	var src string
	if err := s.do(ctx, http.MethodGet, "/source", nil, &src); err != nil {
		return "", fmt.Errorf("webdriver: page source: %w", err)
	}
	return src, nil
}

// Screenshot returns a PNG of the viewport.
func (s *Session) Screenshot(ctx context.Context) ([]byte, error) {
	var b64 string
	if err := s.do(ctx, http.MethodGet, "/screenshot", nil, &b64); err != nil {
		return nil, fmt.Errorf("webdriver: screenshot: %w", err)
	}
	png, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("webdriver: screenshot: decode base64: %w", err)
	}
	return png, nil
}

// Execute runs script, the body of a function called with args, in the
// page, and returns what it returns as JSON ("null" without a return).
// Arguments are JSON values or Elements; an element returned comes back
// as a WebDriver element reference. A script that throws gives an error
// matching ErrJavaScript. WebDriver runs the script outside the page's
// Content-Security-Policy.
func (s *Session) Execute(ctx context.Context, script string, args ...any) (json.RawMessage, error) {
	if args == nil {
		args = []any{}
	}
	var result json.RawMessage
	body := map[string]any{"script": script, "args": args}
	if err := s.do(ctx, http.MethodPost, "/execute/sync", body, &result); err != nil {
		return nil, fmt.Errorf("webdriver: execute script: %w", err)
	}
	return result, nil
}

// Cookie is a cookie as the browser holds it.
type Cookie struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Path   string `json:"path,omitempty"`
	Domain string `json:"domain,omitempty"`
	Secure bool   `json:"secure"`
	// HTTPOnly cookies are invisible to scripts (document.cookie) but
	// listed here.
	HTTPOnly bool `json:"httpOnly"`
	// SameSite is "Strict", "Lax" or "None".
	SameSite string `json:"sameSite,omitempty"`
	// Expiry is in Unix seconds; 0 for a session cookie.
	Expiry int64 `json:"expiry,omitempty"`
}

// Cookies returns the cookies visible to the current page's URL,
// HttpOnly ones included.
func (s *Session) Cookies(ctx context.Context) ([]Cookie, error) {
	var cookies []Cookie
	if err := s.do(ctx, http.MethodGet, "/cookie", nil, &cookies); err != nil {
		return nil, fmt.Errorf("webdriver: cookies: %w", err)
	}
	return cookies, nil
}

// LogEntry is one message of the browser's console.
type LogEntry struct {
	Time time.Time
	// Level is "SEVERE" (console.error, uncaught exceptions, CSP
	// violations, failed loads), "WARNING", "INFO" or "DEBUG".
	Level string
	// Source is where it came from, e.g. "console-api", "javascript",
	// "security", "network".
	Source  string
	Message string
}

// BrowserLog returns the browser console's messages since the previous
// call (chromedriver hands each message out once): console.* calls,
// uncaught exceptions, failed loads and Content-Security-Policy
// violations. It is chromedriver's extension of the protocol (the
// goog:loggingPrefs capability NewSession sets, and the /se/log endpoint,
// or the older /log): best effort, with an error matching
// ErrUnknownCommand from a driver without it. Messages logged in the last
// moments before the call may arrive only in the next one.
func (s *Session) BrowserLog(ctx context.Context) ([]LogEntry, error) {
	var raw []struct {
		Timestamp int64  `json:"timestamp"` // Unix milliseconds
		Level     string `json:"level"`
		Source    string `json:"source"`
		Message   string `json:"message"`
	}
	body := map[string]string{"type": "browser"}
	err := s.do(ctx, http.MethodPost, "/se/log", body, &raw)
	if errors.Is(err, ErrUnknownCommand) {
		err = s.do(ctx, http.MethodPost, "/log", body, &raw)
	}
	if err != nil {
		return nil, fmt.Errorf("webdriver: browser log: %w", err)
	}
	entries := make([]LogEntry, len(raw))
	for i, r := range raw {
		entries[i] = LogEntry{Time: time.UnixMilli(r.Timestamp), Level: r.Level, Source: r.Source, Message: r.Message}
	}
	return entries, nil
}

// elementKey is the W3C key of an element reference in JSON.
const elementKey = "element-6066-11e4-a52e-4f735466cecf"

// Element is a reference to a DOM element of a session's current page. It
// goes stale (ErrStaleElement) when the element leaves the document.
type Element struct {
	s  *Session
	id string
}

// MarshalJSON encodes e as a WebDriver element reference, so that an
// Element passed to Execute arrives in the script as the DOM element.
func (e Element) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{elementKey: e.id})
}

// Find returns the first element matching the CSS selector, or an error
// matching ErrNoSuchElement. It does not wait: see WaitFor.
func (s *Session) Find(ctx context.Context, css string) (Element, error) {
	var ref map[string]string
	if err := s.do(ctx, http.MethodPost, "/element", cssLocator(css), &ref); err != nil {
		return Element{}, fmt.Errorf("webdriver: find %q: %w", css, err)
	}
	return Element{s: s, id: ref[elementKey]}, nil
}

// FindAll returns the elements matching the CSS selector in document
// order, none (and no error) if none matches.
func (s *Session) FindAll(ctx context.Context, css string) ([]Element, error) {
	var refs []map[string]string
	if err := s.do(ctx, http.MethodPost, "/elements", cssLocator(css), &refs); err != nil {
		return nil, fmt.Errorf("webdriver: find all %q: %w", css, err)
	}
	els := make([]Element, len(refs))
	for i, ref := range refs {
		els[i] = Element{s: s, id: ref[elementKey]}
	}
	return els, nil
}

func cssLocator(css string) map[string]string {
	return map[string]string{"using": "css selector", "value": css}
}

// do sends a command about this element: path is relative to
// /session/{id}/element/{element id}.
func (e Element) do(ctx context.Context, method, path string, body, out any) error {
	if e.s == nil {
		return errors.New("zero Element")
	}
	return e.s.do(ctx, method, "/element/"+url.PathEscape(e.id)+path, body, out)
}

// Click scrolls the element into view and clicks its centre, as a user
// would: it fails if another element covers it.
func (e Element) Click(ctx context.Context) error {
	if err := e.do(ctx, http.MethodPost, "/click", struct{}{}, nil); err != nil {
		return fmt.Errorf("webdriver: click: %w", err)
	}
	return nil
}

// SendKeys focuses the element and types text, appending to its value.
func (e Element) SendKeys(ctx context.Context, text string) error {
	if err := e.do(ctx, http.MethodPost, "/value", map[string]string{"text": text}, nil); err != nil {
		return fmt.Errorf("webdriver: send keys: %w", err)
	}
	return nil
}

// Clear empties an input or textarea.
func (e Element) Clear(ctx context.Context) error {
	if err := e.do(ctx, http.MethodPost, "/clear", struct{}{}, nil); err != nil {
		return fmt.Errorf("webdriver: clear: %w", err)
	}
	return nil
}

// Text returns the element's rendered text (what a user sees, as
// innerText: hidden parts left out, whitespace collapsed).
func (e Element) Text(ctx context.Context) (string, error) {
	var t string
	if err := e.do(ctx, http.MethodGet, "/text", nil, &t); err != nil {
		return "", fmt.Errorf("webdriver: text: %w", err)
	}
	return t, nil
}

// Attribute returns the element's HTML attribute name as written in the
// markup (or set by setAttribute), and whether it is present. For the live
// state (an input's current value, a checkbox's checked) use Property.
func (e Element) Attribute(ctx context.Context, name string) (value string, ok bool, err error) {
	var v *string
	if err := e.do(ctx, http.MethodGet, "/attribute/"+url.PathEscape(name), nil, &v); err != nil {
		return "", false, fmt.Errorf("webdriver: attribute %q: %w", name, err)
	}
	if v == nil {
		return "", false, nil
	}
	return *v, true, nil
}

// Property returns the element's DOM property name as JSON ("null" when
// undefined), e.g. "value" for what an input holds now.
func (e Element) Property(ctx context.Context, name string) (json.RawMessage, error) {
	var v json.RawMessage
	if err := e.do(ctx, http.MethodGet, "/property/"+url.PathEscape(name), nil, &v); err != nil {
		return nil, fmt.Errorf("webdriver: property %q: %w", name, err)
	}
	return v, nil
}
