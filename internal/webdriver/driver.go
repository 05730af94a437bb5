package webdriver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// defaultStartTimeout: chromedriver is listening within about 50 ms;
	// the margin is for a loaded CI machine.
	defaultStartTimeout = 20 * time.Second
	// defaultPageLoadTimeout: the console's pages come from loopback.
	defaultPageLoadTimeout = 30 * time.Second
	// statusPoll is how often Start asks /status until it says ready.
	statusPoll = 20 * time.Millisecond
	// closeTimeout bounds deleting one session in Session.Close.
	closeTimeout = 10 * time.Second
	// exitWait bounds how long Close waits for the killed process group
	// and for the output pipes that an orphaned chromium may hold open.
	exitWait = 5 * time.Second
	// outputTail is how much of chromedriver's output Start keeps to
	// explain a failed start.
	outputTail = 8 << 10
	// maxReply bounds one reply's size; a full-page screenshot in base64
	// is a few MiB.
	maxReply = 64 << 20
)

// debianChromium is the real chromium binary of Debian's package.
// /usr/bin/chromium is a shell wrapper around it that sources
// /etc/chromium.d: it exports Debian's Google API keys, adds
// --enable-remote-extensions and --load-extension, and prints a shell error
// when findmnt lists /dev/shm twice. The tests want none of that.
const debianChromium = "/usr/lib/chromium/chromium"

// installHint ends every ErrNotInstalled message.
const installHint = "install the Debian packages chromium and chromium-driver " +
	"(apt-get install -y chromium chromium-driver; make test does it through scripts/ensure-tools.sh)"

// Options configures Start. The zero value is ready to use.
type Options struct {
	// Driver is the chromedriver binary. Default: $NUDGE_CHROMEDRIVER, else
	// chromedriver in PATH.
	Driver string
	// Browser is the chromium binary sessions run. Default: $NUDGE_CHROMIUM,
	// else /usr/lib/chromium/chromium (Debian's binary, without the
	// /usr/bin/chromium wrapper script), else /usr/bin/chromium, else
	// chromium in PATH. It must be the version chromedriver was built for.
	Browser string
	// Args are extra chromium switches, added after NewSession's defaults
	// (browserArgs in session.go). Chromium keeps the last of a repeated
	// switch: a --disable-features here replaces the default list rather
	// than adding to it.
	Args []string
	// StartTimeout bounds how long Start waits for chromedriver to be
	// ready, unless ctx ends first. Default: 20 s.
	StartTimeout time.Duration
	// PageLoadTimeout is the page-load timeout of new sessions: how long
	// Navigate waits for a page. Default: 30 s.
	PageLoadTimeout time.Duration
	// Log receives chromedriver's output (and chromium's, which
	// chromedriver passes on). Default: discarded. Start keeps its last
	// 8 KiB either way, to explain a failed start.
	Log io.Writer
}

// Driver is a running chromedriver process on a loopback port, owned by
// its caller until Close.
type Driver struct {
	opt     Options
	browser string
	base    string // http://127.0.0.1:port
	home    string // chromium's XDG dirs and the profiles, removed by Close
	client  *http.Client
	cmd     *exec.Cmd
	out     *output
	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error         // cmd.Wait's result, read after exited

	mu       sync.Mutex
	closed   bool
	sessions map[*Session]struct{}
}

// Start finds chromedriver and chromium (see Options), launches
// chromedriver on a free loopback port, and returns once its /status says
// it is ready for sessions. The returned Driver must be closed; ctx bounds
// only the start.
func Start(ctx context.Context, opt Options) (*Driver, error) {
	bin, err := findDriver(opt.Driver)
	if err != nil {
		return nil, err
	}
	browser, err := findBrowser(opt.Browser)
	if err != nil {
		return nil, err
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = defaultStartTimeout
	}
	if opt.PageLoadTimeout <= 0 {
		opt.PageLoadTimeout = defaultPageLoadTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, opt.StartTimeout)
	defer cancel()

	// chromium writes outside its profile too: crash reports under
	// $XDG_CONFIG_HOME/chromium (its crashpad handler starts whatever the
	// switches say) and caches under $XDG_CACHE_HOME. Both go in a
	// directory of this Driver, not in the user's home.
	home, err := os.MkdirTemp("", "nudge-webdriver-")
	if err != nil {
		return nil, fmt.Errorf("webdriver: start: %w", err)
	}
	out := newOutput(opt.Log)
	// --port=0: chromedriver binds a free port on 127.0.0.1 and ::1 and
	// says which; no window between choosing a port and binding it. It
	// accepts local connections only by default.
	cmd := exec.Command(bin, "--port=0")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_CACHE_HOME="+filepath.Join(home, "cache"))
	// A chromium that outlives chromedriver keeps the output pipe open;
	// Wait must not wait for it forever.
	cmd.WaitDelay = exitWait
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(home)
		return nil, fmt.Errorf("webdriver: start %s: %w", bin, err)
	}
	d := &Driver{
		opt:     opt,
		browser: browser,
		home:    home,
		client: &http.Client{Transport: &http.Transport{
			Proxy:               nil, // loopback only: never through $HTTP_PROXY
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 8,
		}},
		cmd:      cmd,
		out:      out,
		exited:   make(chan struct{}),
		sessions: make(map[*Session]struct{}),
	}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	if err := d.waitReady(ctx); err != nil {
		d.stop()
		return nil, fmt.Errorf("webdriver: start %s: %w; its output:\n%s", bin, err, out.String())
	}
	return d, nil
}

// waitReady waits for chromedriver to announce its port, then polls
// /status until it reports ready.
func (d *Driver) waitReady(ctx context.Context) error {
	var port int
	select {
	case port = <-d.out.port:
	case <-d.exited:
		return fmt.Errorf("exited before listening (%v)", d.waitErr)
	case <-ctx.Done():
		return fmt.Errorf("no listening port announced: %w", ctx.Err())
	}
	d.base = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	tick := time.NewTicker(statusPoll)
	defer tick.Stop()
	for {
		var status struct {
			Ready   bool   `json:"ready"`
			Message string `json:"message"`
		}
		err := d.do(ctx, http.MethodGet, "/status", nil, &status)
		if err == nil && status.Ready {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("/status: not ready: %s", status.Message)
		}
		select {
		case <-d.exited:
			return fmt.Errorf("exited while starting (%v); last /status: %w", d.waitErr, err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w; last /status: %w", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Close deletes the sessions still open (which stops their browsers and
// removes their profiles), kills chromedriver's process group and waits for
// it. It returns the sessions' errors, if any. Calling it again does
// nothing.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.exited
		return nil
	}
	d.closed = true
	open := make([]*Session, 0, len(d.sessions))
	for s := range d.sessions {
		open = append(open, s)
	}
	d.mu.Unlock()
	var errs []error
	for _, s := range open {
		errs = append(errs, s.Close())
	}
	d.stop()
	return errors.Join(errs...)
}

// stop kills the process group, waits for chromedriver, waits (bounded)
// for the rest of the group, whose chromium processes are not our children
// to wait for, and removes the Driver's directory.
func (d *Driver) stop() {
	killGroup(d.cmd)
	<-d.exited
	d.client.CloseIdleConnections()
	_ = WaitFor(context.Background(), exitWait, "chromedriver's process group to exit", func() (bool, error) {
		return !groupAlive(d.cmd), nil
	})
	_ = removeDir(d.home)
}

// do sends one WebDriver command and decodes the reply's value into out
// (unless out is nil). An error reply is returned as an *Error.
func (d *Driver) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("%s %s: read reply: %w", method, path, err)
	}
	var reply struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &reply); err != nil {
		return fmt.Errorf("%s %s: HTTP %d, undecodable reply %.200q: %w", method, path, resp.StatusCode, raw, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		if json.Unmarshal(reply.Value, &e) == nil && e.Error != "" {
			return newError(resp.StatusCode, e.Error, e.Message)
		}
		return fmt.Errorf("%s %s: HTTP %d: %.200s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(reply.Value, out); err != nil {
			return fmt.Errorf("%s %s: decode value %.200s: %w", method, path, reply.Value, err)
		}
	}
	return nil
}

// findDriver resolves chromedriver: the option, $NUDGE_CHROMEDRIVER, PATH.
func findDriver(path string) (string, error) {
	return findBinary("chromedriver", path, "Options.Driver", "NUDGE_CHROMEDRIVER", "chromedriver")
}

// findBrowser resolves chromium: the option, $NUDGE_CHROMIUM, Debian's
// binary, /usr/bin/chromium, PATH.
func findBrowser(path string) (string, error) {
	return findBinary("chromium", path, "Options.Browser", "NUDGE_CHROMIUM", debianChromium, "/usr/bin/chromium", "chromium")
}

// findBinary resolves the binary name: path (from option) if set, else
// $env if set, else the first of fallbacks that exec.LookPath finds. A
// binary not found is an ErrNotInstalled error.
func findBinary(name, path, option, env string, fallbacks ...string) (string, error) {
	from := option
	if path == "" {
		path, from = os.Getenv(env), "$"+env
	}
	if path != "" {
		bin, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("%w: %s not found (%s: %v): %s", ErrNotInstalled, name, from, err, installHint)
		}
		return bin, nil
	}
	for _, p := range fallbacks {
		if bin, err := exec.LookPath(p); err == nil {
			return bin, nil
		}
	}
	return "", fmt.Errorf("%w: %s not found (tried %s, a bare name in PATH): %s", ErrNotInstalled, name, strings.Join(fallbacks, ", "), installHint)
}

// portLine is chromedriver's announcement of the port it listens on.
var portLine = regexp.MustCompile(`started successfully on port (\d+)`)

// output collects chromedriver's output: it copies it to an optional
// writer, keeps its tail, and reports the announced port once.
type output struct {
	port chan int // receives the port once

	mu    sync.Mutex
	w     io.Writer
	tail  []byte
	head  []byte // output until the port line, scanned for it
	found bool
}

func newOutput(w io.Writer) *output {
	return &output{port: make(chan int, 1), w: w}
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.w != nil {
		_, _ = o.w.Write(p) // a failing log must not stop chromedriver
	}
	o.tail = append(o.tail, p...)
	if n := len(o.tail); n > outputTail {
		o.tail = append(o.tail[:0], o.tail[n-outputTail:]...)
	}
	if !o.found {
		o.head = append(o.head, p...)
		if m := portLine.FindSubmatch(o.head); m != nil {
			if port, err := strconv.Atoi(string(m[1])); err == nil {
				o.port <- port
			}
			o.found, o.head = true, nil
		} else if len(o.head) > outputTail {
			o.found, o.head = true, nil // not chromedriver's usual start: Start times out
		}
	}
	return len(p), nil
}

// String returns the tail of the output.
func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.tail)
}
