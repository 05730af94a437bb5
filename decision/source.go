package decision

import (
	"bytes"
	"errors"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// This file turns the YAML document into raw rule structs, keeping the line
// of every value. It walks yaml.Node trees instead of decoding into tagged
// structs with KnownFields: KnownFields does reject unknown keys, but its
// errors name neither the rule nor the field path, and every error here must
// name both.

// text is a scalar and where it was.
type text struct {
	val  string
	line int
	set  bool
}

// entry is one key of a payload map.
type entry struct {
	key, val string
	line     int
}

type rawFile struct {
	hasVersion       bool
	defaultTZ        text
	channelLimit     text
	triggerHorizon   text
	measure          text
	caps             []rawCap
	quiet            []rawQuiet
	purchaseCooldown *rawPurchaseCooldown
	fallbacks        []rawFallback
	triggers         []rawTrigger
	offers           []rawOffer
	features         []rawFeature
	conversion       *rawConversion
}

type rawFeature struct {
	line                    int
	name, description, expr text
}

type rawConversion struct {
	line          int
	on            []text
	onSet         bool
	window, value text
}

type rawCap struct {
	line                int
	id, channel, period text
	max                 int
	maxSeen, maxOK      bool // maxSeen: the key is there; maxOK: it is an integer
}

type rawQuiet struct {
	line     int
	id       text
	channels []text
	from, to text
}

type rawPurchaseCooldown struct {
	line       int
	id, period text
}

type rawFallback struct {
	line              int
	channel           text
	offerID, template text
	payload           []entry
}

type rawTrigger struct {
	line                       int
	id, description            text
	on                         []text
	when, cooldown, cooldownBy text
	hasAction                  bool
	actionLine                 int
	channel, template          text
	payload, payloadExpr       []entry
	// Journeys and policies (a step of then has no on, cooldown_by,
	// priority or then).
	wait          text
	unless        []text
	then          []rawTrigger
	transactional bool
	priority      int
	ab            *rawAB
}

type rawOffer struct {
	line                 int
	id, description      text
	priority             int
	channels             []text
	when, template       text
	payload, payloadExpr []entry
	category, cooldown   text
	ab                   *rawAB
	selectMode           text
	score                text
}

type rawAB struct {
	line                   int
	control                float64
	controlLine            int
	controlSeen, controlOK bool // controlSeen: the key is there; controlOK: it is a number
	ok                     bool // a mapping (or null)
}

var (
	fileFields     = []string{"version", "settings", "policies", "fallbacks", "conversion", "features", "triggers", "offers"}
	convFields     = []string{"on", "window", "value"}
	settingsFields = []string{"default_timezone", "max_actions_per_channel", "trigger_horizon", "measure"}
	policiesFields = []string{"frequency_caps", "quiet_hours", "purchase_cooldown"}
	capFields      = []string{"id", "channel", "max", "period"}
	quietFields    = []string{"id", "channels", "from", "to"}
	pcFields       = []string{"id", "period"}
	fallbackFields = []string{"offer_id", "template", "payload"}
	triggerFields  = []string{"id", "description", "on", "when", "wait", "unless", "cooldown", "cooldown_by",
		"priority", "transactional", "ab", "action", "then"}
	stepFields   = []string{"id", "description", "wait", "unless", "when", "cooldown", "transactional", "action"}
	actionFields = []string{"channel", "template", "payload", "payload_expr"}
	offerFields  = []string{"id", "description", "priority", "channels", "category", "cooldown", "ab", "select",
		"when", "score", "template", "payload", "payload_expr"}
	abFields      = []string{"control"}
	featureFields = []string{"name", "description", "expr"}
)

// Kinds of rules, as in RuleError.Kind.
const (
	kindTrigger          = "trigger"
	kindStep             = "step"
	kindOffer            = "offer"
	kindFrequencyCap     = "frequency_cap"
	kindQuietHours       = "quiet_hours"
	kindPurchaseCooldown = "purchase_cooldown"
	kindFallback         = "fallback"
	kindFeature          = "feature"
)

// where is the rule being read, for error messages.
type where struct {
	kind, rule string
}

func (c *collector) at(w where, line int, field, format string, args ...any) {
	c.add(line, w.kind, w.rule, field, format, args...)
}

// deref follows YAML aliases (*name) to the node they stand for.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a scalar"
	}
	return "nothing"
}

// fields calls fn for each key of a mapping node, reporting non-mappings,
// unknown keys and repeated keys.
func (c *collector) fields(n *yaml.Node, w where, path string, known []string, fn func(key string, k, v *yaml.Node)) bool {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		c.at(w, n.Line, path, "expected a mapping, got %s", kindName(n))
		return false
	}
	seen := make([]string, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			c.at(w, k.Line, path, "keys must be scalars, got %s", kindName(k))
			continue
		}
		name := k.Value
		field := name
		if path != "" {
			field = path + "." + name
		}
		if !slices.Contains(known, name) {
			c.at(w, k.Line, "", "unknown field %q (known fields: %s)", field, strings.Join(known, ", "))
			continue
		}
		if slices.Contains(seen, name) {
			c.at(w, k.Line, field, "repeated")
			continue
		}
		seen = append(seen, name)
		fn(name, k, v)
	}
	return true
}

// scalar reads a string scalar; null reads as "".
func (c *collector) scalar(n *yaml.Node, w where, field string) text {
	if n.Kind != yaml.ScalarNode {
		c.at(w, n.Line, field, "expected a string, got %s", kindName(n))
		return text{line: n.Line}
	}
	if isNull(n) {
		return text{line: n.Line}
	}
	return text{val: n.Value, line: n.Line, set: true}
}

func (c *collector) integer(n *yaml.Node, w where, field string) (int, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		c.at(w, n.Line, field, "expected an integer, got %s", describe(n))
		return 0, false
	}
	i, err := strconv.Atoi(n.Value)
	if err != nil {
		c.at(w, n.Line, field, "expected an integer, got %q", n.Value)
		return 0, false
	}
	return i, true
}

// number reads a float.
func (c *collector) number(n *yaml.Node, w where, field string) (float64, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!str") {
		c.at(w, n.Line, field, "expected a number, got %s", describe(n))
		return 0, false
	}
	f, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		c.at(w, n.Line, field, "expected a number, got %q", n.Value)
		return 0, false
	}
	return f, true
}

func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return strconv.Quote(n.Value)
	}
	return kindName(n)
}

// list reads a list of string scalars; null reads as empty.
func (c *collector) list(n *yaml.Node, w where, field string) []text {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		c.at(w, n.Line, field, "expected a list, got %s", kindName(n))
		return nil
	}
	out := make([]text, 0, len(n.Content))
	for _, e := range n.Content {
		e = deref(e)
		if e.Kind != yaml.ScalarNode || isNull(e) {
			c.at(w, e.Line, field, "expected a list of strings, got %s", kindName(e))
			continue
		}
		out = append(out, text{val: e.Value, line: e.Line, set: true})
	}
	return out
}

// stringMap reads a mapping of string scalars, in file order.
func (c *collector) stringMap(n *yaml.Node, w where, field string) []entry {
	if isNull(n) {
		return nil
	}
	var out []entry
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		c.at(w, n.Line, field, "expected a mapping of strings, got %s", kindName(n))
		return nil
	}
	// A set, not a scan of out: a mapping may be long (up to the node
	// limit), and a scan per key would make reading it quadratic.
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode || isNull(k) || k.Value == "" {
			c.at(w, k.Line, field, "keys must be non-empty strings")
			continue
		}
		f := field + "." + k.Value
		if seen[k.Value] {
			c.at(w, k.Line, f, "repeated")
			continue
		}
		seen[k.Value] = true
		if v.Kind != yaml.ScalarNode {
			c.at(w, v.Line, f, "expected a string, got %s", kindName(v))
			continue
		}
		val := v.Value
		if isNull(v) {
			val = ""
		}
		out = append(out, entry{key: k.Value, val: val, line: v.Line})
	}
	return out
}

// readFile reads the document's structure. Problems go to c; what could be
// read is returned so later checks can still report on the rest. The
// limits on nodes, triggers, offers and policies are checked before what
// they bound is read.
func readFile(c *collector, data []byte, l Limits) rawFile {
	var f rawFile
	var doc, next yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	err := dec.Decode(&doc)
	if err == nil {
		// A second document would be silently ignored: refuse it.
		switch err = dec.Decode(&next); {
		case errors.Is(err, io.EOF):
			err = nil
		case err == nil:
			c.add(next.Line, "", "", "", "a rules file holds one YAML document; found another")
			return f
		}
	}
	switch {
	case errors.Is(err, io.EOF) || (err == nil && len(doc.Content) == 0):
		c.add(1, "", "", "", "empty rules file (want at least \"version: 1\")")
		return f
	case err != nil:
		c.add(0, "", "", "", "%v", err)
		return f
	}
	root := deref(doc.Content[0])
	if !checkNodes(c, root, l.MaxYAMLNodes) {
		return f
	}
	top := where{}
	ok := c.fields(root, top, "", fileFields, func(key string, k, v *yaml.Node) {
		switch key {
		case "version":
			f.hasVersion = true
			if n, ok := c.integer(v, top, "version"); ok && n != 1 {
				c.at(top, v.Line, "version", "must be 1, got %d", n)
			}
		case "settings":
			if isNull(v) {
				return
			}
			c.fields(v, top, "settings", settingsFields, func(key string, _, v *yaml.Node) {
				switch key {
				case "default_timezone":
					f.defaultTZ = c.scalar(v, top, "settings."+key)
				case "max_actions_per_channel":
					f.channelLimit = c.scalar(v, top, "settings."+key)
				case "trigger_horizon":
					f.triggerHorizon = c.scalar(v, top, "settings."+key)
				case "measure":
					f.measure = c.scalar(v, top, "settings."+key)
				}
			})
		case "policies":
			if isNull(v) {
				return
			}
			c.fields(v, top, "policies", policiesFields, func(key string, _, v *yaml.Node) {
				readPolicies(c, &f, key, v, l.MaxPolicies)
			})
		case "fallbacks":
			if isNull(v) {
				return
			}
			readFallbacks(c, &f, v)
		case "conversion":
			rc := &rawConversion{line: k.Line}
			f.conversion = rc
			if isNull(v) {
				return
			}
			c.fields(v, top, "conversion", convFields, func(key string, _, v *yaml.Node) {
				switch key {
				case "on":
					rc.on, rc.onSet = c.list(v, top, "conversion.on"), true
				case "window":
					rc.window = c.scalar(v, top, "conversion.window")
				case "value":
					rc.value = c.scalar(v, top, "conversion.value")
				}
			})
		case "triggers":
			f.triggers = readList(c, top, v, "triggers", l.MaxTriggers, "max_triggers", readTrigger)
		case "offers":
			f.offers = readList(c, top, v, "offers", l.MaxOffers, "max_offers", readOffer)
		case "features":
			f.features = readList(c, top, v, "features", l.MaxFeatures, "max_features", readFeature)
		}
	})
	if ok && !f.hasVersion {
		c.at(top, root.Line, "version", "required (must be 1)")
	}
	return f
}

// ruleID finds the id of a rule mapping first, so every other error in the
// rule can name it.
func ruleID(n *yaml.Node) string { return scalarOf(n, "id") }

// scalarOf finds the value of a key of a mapping, "" if it has none.
func scalarOf(n *yaml.Node, key string) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.Value == key && v.Kind == yaml.ScalarNode && !isNull(v) {
			return v.Value
		}
	}
	return ""
}

// readFeature reads one feature of the features section; its errors
// name it by its name.
func readFeature(c *collector, n *yaml.Node) rawFeature {
	f := rawFeature{line: n.Line}
	w := where{kind: kindFeature, rule: scalarOf(n, "name")}
	c.fields(n, w, "", featureFields, func(key string, _, v *yaml.Node) {
		switch key {
		case "name":
			f.name = c.scalar(v, w, key)
		case "description":
			f.description = c.scalar(v, w, key)
		case "expr":
			f.expr = c.scalar(v, w, key)
		}
	})
	return f
}

func readTrigger(c *collector, n *yaml.Node) rawTrigger {
	return readStep(c, n, where{kind: "trigger", rule: ruleID(n)}, triggerFields)
}

// readStep reads a trigger, or with stepFields a step of a trigger's then.
func readStep(c *collector, n *yaml.Node, w where, known []string) rawTrigger {
	t := rawTrigger{line: n.Line}
	c.fields(n, w, "", known, func(key string, k, v *yaml.Node) {
		switch key {
		case "wait":
			t.wait = c.scalar(v, w, key)
		case "unless":
			t.unless = c.list(v, w, key)
		case "priority":
			t.priority, _ = c.integer(v, w, key)
		case "ab":
			t.ab = readAB(c, w, v)
		case "transactional":
			if v.Kind != yaml.ScalarNode || (v.Value != "true" && v.Value != "false") {
				c.at(w, v.Line, key, "expected true or false, got %s", describe(v))
				return
			}
			t.transactional = v.Value == "true"
		case "then":
			if isNull(v) {
				return
			}
			if v.Kind != yaml.SequenceNode {
				c.at(w, v.Line, key, "expected a list of steps, got %s", kindName(v))
				return
			}
			for _, sn := range v.Content {
				sn = deref(sn)
				if sn.Kind != yaml.MappingNode {
					c.at(w, sn.Line, key, "expected a step (a mapping with id, wait and action), got %s", kindName(sn))
					continue
				}
				t.then = append(t.then, readStep(c, sn, where{kind: "step", rule: ruleID(sn)}, stepFields))
			}
		case "id":
			t.id = c.scalar(v, w, key)
		case "description":
			t.description = c.scalar(v, w, key)
		case "on":
			t.on = c.list(v, w, key)
		case "when":
			t.when = c.scalar(v, w, key)
		case "cooldown":
			t.cooldown = c.scalar(v, w, key)
		case "cooldown_by":
			t.cooldownBy = c.scalar(v, w, key)
		case "action":
			t.actionLine = k.Line
			if isNull(v) {
				return
			}
			t.hasAction = c.fields(v, w, "action", actionFields, func(key string, _, v *yaml.Node) {
				switch key {
				case "channel":
					t.channel = c.scalar(v, w, "action.channel")
				case "template":
					t.template = c.scalar(v, w, "action.template")
				case "payload":
					t.payload = c.stringMap(v, w, "action.payload")
				case "payload_expr":
					t.payloadExpr = c.stringMap(v, w, "action.payload_expr")
				}
			})
		}
	})
	return t
}

func readOffer(c *collector, n *yaml.Node) rawOffer {
	o := rawOffer{line: n.Line}
	w := where{kind: "offer", rule: ruleID(n)}
	c.fields(n, w, "", offerFields, func(key string, _, v *yaml.Node) {
		switch key {
		case "id":
			o.id = c.scalar(v, w, key)
		case "description":
			o.description = c.scalar(v, w, key)
		case "priority":
			o.priority, _ = c.integer(v, w, key)
		case "channels":
			o.channels = c.list(v, w, key)
		case "category":
			o.category = c.scalar(v, w, key)
		case "cooldown":
			o.cooldown = c.scalar(v, w, key)
		case "ab":
			o.ab = readAB(c, w, v)
		case "select":
			o.selectMode = c.scalar(v, w, key)
		case "when":
			o.when = c.scalar(v, w, key)
		case "score":
			o.score = c.scalar(v, w, key)
		case "template":
			o.template = c.scalar(v, w, key)
		case "payload":
			o.payload = c.stringMap(v, w, key)
		case "payload_expr":
			o.payloadExpr = c.stringMap(v, w, key)
		}
	})
	return o
}

// readAB reads a rule's ab mapping.
func readAB(c *collector, w where, v *yaml.Node) *rawAB {
	ab := &rawAB{line: v.Line, ok: true}
	if isNull(v) {
		return ab
	}
	ab.ok = c.fields(v, w, "ab", abFields, func(_ string, _, v *yaml.Node) {
		ab.controlSeen, ab.controlLine = true, v.Line
		ab.control, ab.controlOK = c.number(v, w, "ab.control")
	})
	return ab
}

// readPolicies reads one key of the policies section; max bounds the
// frequency caps and quiet hours together.
func readPolicies(c *collector, f *rawFile, key string, v *yaml.Node, max int) {
	top := where{}
	field := "policies." + key
	if isNull(v) {
		return
	}
	if key == "purchase_cooldown" {
		pc := &rawPurchaseCooldown{line: v.Line}
		w := where{kind: kindPurchaseCooldown, rule: ruleID(v)}
		if c.fields(v, w, "", pcFields, func(key string, _, v *yaml.Node) {
			switch key {
			case "id":
				pc.id = c.scalar(v, w, key)
			case "period":
				pc.period = c.scalar(v, w, key)
			}
		}) {
			f.purchaseCooldown = pc
		}
		return
	}
	if v.Kind != yaml.SequenceNode {
		c.at(top, v.Line, field, "expected a list, got %s", kindName(v))
		return
	}
	// Counted before reading: the other list, if read already, has its
	// share of the limit.
	if had := len(f.caps) + len(f.quiet); had+len(v.Content) > max {
		at := max - had
		c.add(deref(v.Content[at]).Line, "", "", field,
			"the file has %d frequency caps and quiet hours, over the limit of %d (max_policies) from this one on",
			had+len(v.Content), max)
		return
	}
	for _, n := range v.Content {
		n = deref(n)
		switch key {
		case "frequency_caps":
			rc := rawCap{line: n.Line}
			w := where{kind: kindFrequencyCap, rule: ruleID(n)}
			ok := c.fields(n, w, "", capFields, func(key string, _, v *yaml.Node) {
				switch key {
				case "id":
					rc.id = c.scalar(v, w, key)
				case "channel":
					rc.channel = c.scalar(v, w, key)
				case "max":
					rc.maxSeen = true
					rc.max, rc.maxOK = c.integer(v, w, key)
				case "period":
					rc.period = c.scalar(v, w, key)
				}
			})
			if ok {
				f.caps = append(f.caps, rc)
			}
		case "quiet_hours":
			rq := rawQuiet{line: n.Line}
			w := where{kind: kindQuietHours, rule: ruleID(n)}
			ok := c.fields(n, w, "", quietFields, func(key string, _, v *yaml.Node) {
				switch key {
				case "id":
					rq.id = c.scalar(v, w, key)
				case "channels":
					rq.channels = c.list(v, w, key)
				case "from":
					rq.from = c.scalar(v, w, key)
				case "to":
					rq.to = c.scalar(v, w, key)
				}
			})
			if ok {
				f.quiet = append(f.quiet, rq)
			}
		}
	}
}

// readFallbacks reads the fallbacks mapping: channel -> literal offer.
func readFallbacks(c *collector, f *rawFile, v *yaml.Node) {
	top := where{}
	v = deref(v)
	if v.Kind != yaml.MappingNode {
		c.at(top, v.Line, "fallbacks", "expected a mapping of channel to offer, got %s", kindName(v))
		return
	}
	seen := make(map[string]bool, len(v.Content)/2)
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, n := deref(v.Content[i]), deref(v.Content[i+1])
		if k.Kind != yaml.ScalarNode || isNull(k) {
			c.at(top, k.Line, "fallbacks", "keys must be channels, got %s", kindName(k))
			continue
		}
		w := where{kind: kindFallback, rule: k.Value}
		if seen[k.Value] {
			c.at(w, k.Line, "", "repeated")
			continue
		}
		seen[k.Value] = true
		fb := rawFallback{line: k.Line, channel: text{val: k.Value, line: k.Line, set: true}}
		if isNull(n) {
			c.at(w, n.Line, "", "expected a mapping (offer_id, template, payload), got nothing")
			continue
		}
		ok := c.fields(n, w, "", fallbackFields, func(key string, _, v *yaml.Node) {
			switch key {
			case "offer_id":
				fb.offerID = c.scalar(v, w, key)
			case "template":
				fb.template = c.scalar(v, w, key)
			case "payload":
				fb.payload = c.stringMap(v, w, key)
			}
		})
		if ok {
			f.fallbacks = append(f.fallbacks, fb)
		}
	}
}

// readList reads a list section of rules (triggers, offers, features)
// with read, refusing a list over its limit (key names it); null is an
// empty list.
func readList[T any](c *collector, top where, v *yaml.Node, field string, limit int, key string, read func(*collector, *yaml.Node) T) []T {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		c.at(top, v.Line, field, "expected a list, got %s", kindName(v))
		return nil
	}
	if !checkCount(c, v, field, limit, key) {
		return nil
	}
	out := make([]T, 0, len(v.Content))
	for _, n := range v.Content {
		out = append(out, read(c, deref(n)))
	}
	return out
}

// checkCount refuses a list of rules longer than the limit before any is
// read, at the first one past it.
func checkCount(c *collector, list *yaml.Node, field string, limit int, key string) bool {
	if len(list.Content) <= limit {
		return true
	}
	c.add(deref(list.Content[limit]).Line, "", "", field, "the file has %d %s, over the limit of %d (%s) from this one on",
		len(list.Content), field, limit, key)
	return false
}

// checkNodes refuses a document with more nodes than the limit once every
// alias is counted as what it stands for, before it is walked. The count
// takes time linear in the nodes written: the size of a node with an
// anchor, the only kind an alias can name, is computed once. It is
// iterative (aliases of aliases may nest deep) and saturates instead of
// overflowing. An alias inside the node it names (&a [*a]) stands for a
// document without end.
func checkNodes(c *collector, root *yaml.Node, limit int) bool {
	sizes := make(map[*yaml.Node]uint64) // anchored nodes; 0: being counted
	cycle := false
	type frame struct {
		n    *yaml.Node
		next int
		sum  uint64
	}
	var stack []frame
	count := func(n *yaml.Node) uint64 {
		stack = append(stack[:0], frame{n: n, sum: 1})
		if n.Anchor != "" {
			sizes[n] = 0
		}
		var done uint64
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			children := top.n.Content
			if top.n.Kind == yaml.AliasNode {
				children = []*yaml.Node{top.n.Alias}
			}
			if top.next < len(children) {
				ch := children[top.next]
				top.next++
				if ch == nil {
					continue
				}
				if s, ok := sizes[ch]; ok {
					if s == 0 {
						cycle, s = true, math.MaxUint64
					}
					top.sum = addCost(top.sum, s)
					continue
				}
				if ch.Anchor != "" {
					sizes[ch] = 0
				}
				stack = append(stack, frame{n: ch, sum: 1})
				continue
			}
			done = top.sum
			if top.n.Anchor != "" {
				sizes[top.n] = done
			}
			stack = stack[:len(stack)-1]
			if len(stack) > 0 {
				stack[len(stack)-1].sum = addCost(stack[len(stack)-1].sum, done)
			}
		}
		return done
	}
	total := count(root)
	if total <= uint64(limit) {
		return true
	}
	// Name the top-level key that holds the most.
	line, field, most := root.Line, "", uint64(0)
	if root.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(root.Content); i += 2 {
			if s := count(root.Content[i+1]); s >= most {
				line, field, most = root.Content[i].Line, root.Content[i].Value, s
			}
		}
	}
	if cycle {
		c.add(line, "", "", field, "an alias stands for a node that contains it: the document has no end once aliases are followed (max_yaml_nodes)")
		return false
	}
	c.add(line, "", "", field, "the document has %s YAML nodes once aliases are followed, over the limit of %d (max_yaml_nodes)",
		formatCost(total), limit)
	return false
}
