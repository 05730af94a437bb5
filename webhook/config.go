package webhook

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// GroupPrefix starts the consumer group of every webhook: the webhook
// "sms" reads the outbox as the group "webhook-sms". No ActionService
// subscriber should use such a group: it would take actions from the
// webhook.
const GroupPrefix = "webhook-"

// Config is one webhook. The zero value of a field means its default.
type Config struct {
	// Name identifies the webhook in logs, in metrics (attribute webhook)
	// and in its consumer group (GroupPrefix + Name). Required: 1 to 48
	// of a-z, 0-9, "_" and "-", starting with a letter or a digit.
	Name string
	// URL receives one POST per action. Required: an absolute http:// or
	// https:// URL.
	URL string
	// Channels: only actions on these channels are sent; the others are
	// acknowledged for the webhook's group without a request. Each must
	// be a channel name as rules write them (a-z first, then a-z, 0-9,
	// "_", "-"; at most 32). Default (empty): every channel.
	Channels []string
	// Secret keys the HMAC-SHA256 of X-Nudge-Signature. Required.
	Secret string
	// Timeout bounds one attempt: connecting, sending, and reading the
	// response. Default 10s.
	Timeout time.Duration
	// MaxInFlight bounds the requests in flight at once. Default 16.
	MaxInFlight int
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between two attempts (see Backoff). Defaults 500ms and 30s (or
	// BackoffMin, when that is more).
	BackoffMin time.Duration
	BackoffMax time.Duration
	// MaxAge: an action that entered the outbox longer ago than this is
	// acknowledged without being sent (counted in
	// nudge.webhook.expired), e.g. a coupon SMS a day late, or the
	// outbox's backlog a newly added webhook would otherwise get. Default
	// 0: no limit, every action is sent.
	MaxAge time.Duration
}

// Defaults of Config.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultMaxInFlight = 16
	DefaultBackoffMin  = 500 * time.Millisecond
	DefaultBackoffMax  = 30 * time.Second
)

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(DefaultBackoffMax, c.BackoffMin)
	}
	return c
}

// Group is the webhook's consumer group.
func (c Config) Group() string { return GroupPrefix + c.Name }

// ErrInvalidConfig is what every error of Validate is (errors.Is), and
// every error of New about its webhooks.
var ErrInvalidConfig = errors.New("invalid webhook")

// ConfigError is a field of a Config that cannot work.
type ConfigError struct {
	// Field is the field's name in nudged's configuration: name, url,
	// channels, secret, timeout, max_in_flight, backoff_min, backoff_max
	// or max_age.
	Field string
	// Problem says what is wrong, and what is wanted.
	Problem string
}

func (e *ConfigError) Error() string {
	return ErrInvalidConfig.Error() + ": " + e.Field + ": " + e.Problem
}
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

var (
	namePattern    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,47}$`)
	channelPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`) // decision's
)

// Validate reports the first field of c that cannot work, as a
// *ConfigError. Zero values are valid: they mean the defaults.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if !namePattern.MatchString(c.Name) {
		return bad("name", "%q is not a safe name: 1 to 48 of a-z, 0-9, \"_\" and \"-\", starting with a letter or a digit", c.Name)
	}
	if err := checkURL(c.URL); err != nil {
		return bad("url", "%v", err)
	}
	seen := make(map[string]bool, len(c.Channels))
	for _, ch := range c.Channels {
		switch {
		case !channelPattern.MatchString(ch):
			return bad("channels", "%q is not a channel name (%s, as rules write them)", ch, channelPattern)
		case seen[ch]:
			return bad("channels", "%q is listed twice", ch)
		}
		seen[ch] = true
	}
	if strings.TrimSpace(c.Secret) == "" {
		return bad("secret", "required: every request is signed with it (X-Nudge-Signature)")
	}
	switch {
	case c.Timeout < 0:
		return bad("timeout", "%v; want a duration above 0 (default %v)", c.Timeout, DefaultTimeout)
	case c.MaxInFlight < 0:
		return bad("max_in_flight", "%d; want 1 or more (default %d)", c.MaxInFlight, DefaultMaxInFlight)
	case c.BackoffMin < 0:
		return bad("backoff_min", "%v; want a duration above 0 (default %v)", c.BackoffMin, DefaultBackoffMin)
	case c.BackoffMax < 0:
		return bad("backoff_max", "%v; want a duration above 0 (default %v)", c.BackoffMax, DefaultBackoffMax)
	case c.MaxAge < 0:
		return bad("max_age", "%v; want a duration above 0, or 0 for no limit", c.MaxAge)
	}
	if d := c.withDefaults(); d.BackoffMin > d.BackoffMax {
		return bad("backoff_min", "%v is above backoff_max %v", d.BackoffMin, d.BackoffMax)
	}
	return nil
}

// checkURL accepts absolute http and https URLs with a host.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return errors.New("required")
	case err != nil:
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may carry a password
		}
		return fmt.Errorf("not a URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q is not an absolute http:// or https:// URL", redactURL(raw))
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("%q has no host", redactURL(raw))
	case u.Fragment != "":
		return fmt.Errorf("%q has a fragment, which is never sent", redactURL(raw))
	}
	return nil
}

// redactURL hides the password of a URL's user information, for logs
// and errors.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	return u.String()
}
