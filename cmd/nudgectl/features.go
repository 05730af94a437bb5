package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// nudgectl features get and export: the rules file's features for models
// (ProfileService.GetFeatures and ExportFeatures, role features or admin).

func newFeaturesGetCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		conn     connFlags
		features []string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "get USER...",
		Short: "Print users' features (ProfileService/GetFeatures, role features or admin)",
		Long: `Evaluates the features of the rules in force (the rules file's features
section) on the users' profiles now (ProfileService/GetFeatures, role
features or admin; at most 1000 users): a table with a row per user (FOUND
no: a user never seen, whose features are those of an empty profile) and
a column per feature, then the features that failed on a user; or the
response as one line of JSON with --json. --features picks features (by
default every one, in the file's order).`,
		Example: "  nudgectl features get u1 u2 --features views_7d,purchases_30d",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return exitWith(featuresGet(conn, args, features, asJSON, stdout, stderr))
		},
	}
	fs := cmd.Flags()
	conn = addConnFlags(fs, true)
	fs.StringSliceVar(&features, "features", nil, "comma-separated features (default: every feature of the rules)")
	fs.BoolVar(&asJSON, "json", false, "print the response as one line of JSON")
	return cmd
}

// featuresGet: nudgectl features get USER... [--features a,b] [--json]
func featuresGet(conn connFlags, users, features []string, asJSON bool, stdout, stderr io.Writer) int {
	return conn.call("nudgectl features get", stderr, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		resp, err := nudgev1.NewProfileServiceClient(cc).GetFeatures(ctx, &nudgev1.GetFeaturesRequest{UserIds: users, Features: features})
		if err != nil {
			return err
		}
		if asJSON {
			printProto(stdout, resp, true)
		} else {
			printFeatures(stdout, resp)
		}
		return nil
	})
}

// printFeatures prints a GetFeatures answer as a table for people, then
// the features that have no value, and why.
func printFeatures(w io.Writer, resp *nudgev1.GetFeaturesResponse) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "USER\tFOUND")
	for _, f := range resp.GetFeatures() {
		fmt.Fprint(tw, "\t"+f)
	}
	fmt.Fprintln(tw)
	var failed []string
	for _, r := range resp.GetRows() {
		found := "yes"
		if !r.GetFound() {
			found = "no"
		}
		fmt.Fprint(tw, r.GetUserId()+"\t"+found)
		for _, f := range resp.GetFeatures() {
			v, ok := r.GetValues()[f]
			if !ok {
				fmt.Fprint(tw, "\terror")
				failed = append(failed, fmt.Sprintf("%s %s: %s", r.GetUserId(), f, r.GetErrors()[f]))
				continue
			}
			fmt.Fprint(tw, "\t"+formatFeature(v))
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
	if len(failed) > 0 {
		fmt.Fprintln(w, "\nerrors:")
		for _, f := range failed {
			fmt.Fprintln(w, "  "+f)
		}
	}
	fmt.Fprintf(w, "\nrules %s, at %s\n", resp.GetRulesVersion(), resp.GetAt().AsTime().UTC().Format(time.RFC3339Nano))
}

// formatFeature is a value as short as it can be read back exactly.
func formatFeature(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// exportOptions are the flags of nudgectl features export.
type exportOptions struct {
	conn     connFlags
	format   string
	features []string
	output   string
	quiet    bool
}

// exportFormats are the formats of nudgectl features export.
var exportFormats = []string{"jsonl", "parquet"}

func newFeaturesExportCmd(stdout, stderr io.Writer) *cobra.Command {
	var o exportOptions
	cmd := &cobra.Command{
		Use:   "export [--format jsonl|parquet] [-o FILE]",
		Short: "Export every user's features (ProfileService/ExportFeatures, role features or admin)",
		Long: `Evaluates the features of the rules in force on every stored profile
(ProfileService/ExportFeatures, role features or admin) and writes them as
they arrive: one consistent export, every row with the rules in force when
it started and windows ending at one instant, the start. Each user is
written once.

--format jsonl (the default): one JSON object per line,
  {"user_id":"u1","found":true,"profile_version":7,"features":{"views_7d":3},"errors":{"ltv":"..."}}
with "errors" only on the rows where a feature failed (its expression, or
a profile that cannot be decoded: every feature).

--format parquet: columns user_id (string), found (boolean),
profile_version (int64), errors (string, the JSON of the row's errors;
null when none), then one optional double column per feature, null where
the feature failed; zstd-compressed, in row groups of 65,536 rows (memory
stays bounded whatever the number of users); key/value metadata
rules_version, at (RFC 3339) and features (the names, comma-separated, in
the rules' order). A feature named like one of the first four columns
cannot be exported as parquet. Parquet needs -o FILE, or a standard output
that is not a terminal.

-o FILE writes FILE, which appears only once the export is complete (it
is written under a temporary name beside it). Without -o the rows go to
standard output. Progress goes to stderr, a line a second (--quiet: none),
then a summary with the rules version and the instant of the export.
Exit status 1 when the export fails or is interrupted (no FILE is then
written).`,
		Example: `  nudgectl features export --format parquet -o features.parquet
  nudgectl features export --features views_7d,purchases | gzip > features.jsonl.gz`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if !slices.Contains(exportFormats, o.format) {
				return fmt.Errorf("--format %q: want %s", o.format, strings.Join(exportFormats, " or "))
			}
			return exitWith(featuresExport(o, stdout, stderr))
		},
	}
	fs := cmd.Flags()
	o.conn = addConnFlags(fs, false)
	fs.StringVar(&o.format, "format", "jsonl", "output format: jsonl or parquet")
	fs.StringSliceVar(&o.features, "features", nil, "comma-separated features (default: every feature of the rules)")
	fs.StringVarP(&o.output, "output", "o", "", "write to FILE, complete or not at all (default: standard output)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress on stderr (the summary stays)")
	return cmd
}

// exportSummary is what an export did.
type exportSummary struct {
	rows, withErrors int
	rulesVersion     string
	at               time.Time
}

// featuresExport: nudgectl features export.
func featuresExport(o exportOptions, stdout, stderr io.Writer) int {
	const cmd = "nudgectl features export"
	if o.format == "parquet" && o.output == "" && isTerminal(stdout) {
		fmt.Fprintf(stderr, "%s: parquet is binary: give -o FILE, or redirect standard output\n", cmd)
		return 2
	}
	out, commit, abort, err := exportOutput(o.output, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return 1
	}
	defer abort() // after commit: nothing left to remove
	c, err := o.conn.dial()
	if err != nil {
		return dialFailed(stderr, cmd, err)
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	last := start
	var sum exportSummary
	progress := func() {
		if o.quiet || time.Since(last) < progressInterval {
			return
		}
		last = time.Now()
		s := last.Sub(start).Seconds()
		fmt.Fprintf(stderr, "%s: %d rows in %.0fs (%.0f rows/s)\n", cmd, sum.rows, s, float64(sum.rows)/s)
	}
	err = exportFeatures(ctx, nudgev1.NewProfileServiceClient(c.Conn()), o.format, o.features, out, &sum, progress)
	if err == nil {
		err = commit()
	}
	switch {
	case err != nil && ctx.Err() != nil && o.output != "":
		fmt.Fprintf(stderr, "%s: interrupted after %d rows: %s not written\n", cmd, sum.rows, o.output)
		return 1
	case err != nil && ctx.Err() != nil:
		fmt.Fprintf(stderr, "%s: interrupted after %d rows: the output is incomplete\n", cmd, sum.rows)
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "%s: %s\n", cmd, o.conn.Describe(err))
		return 1
	}
	s := time.Since(start).Seconds()
	to := o.output
	if to == "" {
		to = "standard output"
	}
	fmt.Fprintf(stderr, "%s: %d rows (%d with errors) in %.1fs (%.0f rows/s) to %s; rules %s, at %s\n",
		cmd, sum.rows, sum.withErrors, s, float64(sum.rows)/max(s, 1e-9), to, sum.rulesVersion, sum.at.UTC().Format(time.RFC3339Nano))
	return 0
}

// exportOutput opens where the export goes: path, written under a
// temporary name beside it and renamed by commit; or stdout when path is
// empty. abort removes the temporary file unless commit renamed it.
func exportOutput(path string, stdout io.Writer) (out io.Writer, commit func() error, abort func(), err error) {
	if path == "" {
		return stdout, func() error { return nil }, func() {}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return nil, nil, nil, err
	}
	done := false
	commit = func() error {
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(f.Name(), path); err != nil {
			return err
		}
		done = true
		return nil
	}
	abort = func() {
		if !done {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}
	return f, commit, abort, nil
}

// rowWriter writes an export's rows in one format.
type rowWriter interface {
	write(rows []*nudgev1.FeatureRow) error
	close() error
}

// exportFeatures calls ExportFeatures and writes its rows to out in format
// as they arrive, counting them in sum and calling progress after each
// page. It returns when the export is complete and written (nil), or
// failed.
func exportFeatures(ctx context.Context, c nudgev1.ProfileServiceClient, format string, features []string, out io.Writer, sum *exportSummary, progress func()) error {
	ctx, cancel := context.WithCancel(ctx) // ends the call when writing fails
	defer cancel()
	stream, err := c.ExportFeatures(ctx, &nudgev1.ExportFeaturesRequest{Features: features})
	if err != nil {
		return err
	}
	head, err := stream.Recv()
	if err != nil {
		return err
	}
	sum.rulesVersion, sum.at = head.GetRulesVersion(), head.GetAt().AsTime()
	var w rowWriter
	switch format {
	case "parquet":
		w, err = newParquetRows(out, head)
	default:
		w = newJSONLRows(out)
	}
	if err != nil {
		return err
	}
	if err := w.write(head.GetRows()); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return w.close()
		}
		if err != nil {
			return err
		}
		if err := w.write(resp.GetRows()); err != nil {
			return err
		}
		sum.rows += len(resp.GetRows())
		for _, r := range resp.GetRows() {
			if len(r.GetErrors()) > 0 {
				sum.withErrors++
			}
		}
		progress()
	}
}

// jsonlRow is a row as a JSON line.
type jsonlRow struct {
	UserID         string             `json:"user_id"`
	Found          bool               `json:"found"`
	ProfileVersion uint64             `json:"profile_version"`
	Features       map[string]float64 `json:"features"`
	Errors         map[string]string  `json:"errors,omitempty"`
}

// jsonlRows writes rows as JSON lines.
type jsonlRows struct {
	w   *bufio.Writer
	enc *json.Encoder
}

func newJSONLRows(out io.Writer) *jsonlRows {
	w := bufio.NewWriterSize(out, 64<<10)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &jsonlRows{w: w, enc: enc}
}

func (j *jsonlRows) write(rows []*nudgev1.FeatureRow) error {
	for _, r := range rows {
		values := r.GetValues()
		if values == nil {
			values = map[string]float64{} // {} rather than null: every row has the key
		}
		// Values are finite: the server reports NaN and infinities as
		// errors, so encoding cannot fail on them.
		if err := j.enc.Encode(jsonlRow{r.GetUserId(), r.GetFound(), r.GetProfileVersion(), values, r.GetErrors()}); err != nil {
			return err
		}
	}
	return nil
}

func (j *jsonlRows) close() error { return j.w.Flush() }

// Parquet layout of an export.
const (
	parquetRowGroup = 64 << 10
	// The columns before the features'.
	colUserID         = "user_id"
	colFound          = "found"
	colProfileVersion = "profile_version"
	colErrors         = "errors"
)

// parquetRows writes rows to a parquet file whose schema is built from
// the export's features.
type parquetRows struct {
	w *parquet.Writer
	// Column indexes in the schema (which orders columns by name).
	userID, found, version, errs int
	features                     []int // of the head's features, in order
	names                        []string
	columns                      int
	values                       []parquet.Value // the page's rows, one after the other
	batch                        []parquet.Row
}

func newParquetRows(out io.Writer, head *nudgev1.ExportFeaturesResponse) (*parquetRows, error) {
	names := head.GetFeatures()
	group := parquet.Group{
		colUserID:         parquet.String(),
		colFound:          parquet.Leaf(parquet.BooleanType),
		colProfileVersion: parquet.Leaf(parquet.Int64Type),
		colErrors:         parquet.Optional(parquet.String()),
	}
	for _, n := range names {
		if _, taken := group[n]; taken {
			return nil, fmt.Errorf("feature %q has the name of a column of the export (%s, %s, %s, %s): rename it, or export it as jsonl",
				n, colUserID, colFound, colProfileVersion, colErrors)
		}
		group[n] = parquet.Optional(parquet.Leaf(parquet.DoubleType))
	}
	schema := parquet.NewSchema("features", group)
	col := func(name string) int {
		leaf, _ := schema.Lookup(name) // every name is in the group
		return leaf.ColumnIndex
	}
	p := &parquetRows{
		w: parquet.NewWriter(out, schema,
			parquet.Compression(&parquet.Zstd),
			parquet.MaxRowsPerRowGroup(parquetRowGroup),
			parquet.KeyValueMetadata("rules_version", head.GetRulesVersion()),
			parquet.KeyValueMetadata("at", head.GetAt().AsTime().UTC().Format(time.RFC3339Nano)),
			parquet.KeyValueMetadata("features", strings.Join(names, ",")),
			parquet.CreatedBy("nudgectl", "", "")),
		userID: col(colUserID), found: col(colFound), version: col(colProfileVersion), errs: col(colErrors),
		names:   names,
		columns: len(group),
	}
	for _, n := range names {
		p.features = append(p.features, col(n))
	}
	return p, nil
}

func (p *parquetRows) write(rows []*nudgev1.FeatureRow) error {
	// WriteRows copies the values into its column buffers: the page's
	// memory is reused for the next one.
	p.values = slices.Grow(p.values[:0], len(rows)*p.columns)[:len(rows)*p.columns]
	p.batch = p.batch[:0]
	for k, r := range rows {
		row := parquet.Row(p.values[k*p.columns : (k+1)*p.columns : (k+1)*p.columns])
		row[p.userID] = parquet.ByteArrayValue([]byte(r.GetUserId())).Level(0, 0, p.userID)
		row[p.found] = parquet.BooleanValue(r.GetFound()).Level(0, 0, p.found)
		row[p.version] = parquet.Int64Value(int64(r.GetProfileVersion())).Level(0, 0, p.version)
		row[p.errs] = parquet.NullValue().Level(0, 0, p.errs)
		if len(r.GetErrors()) > 0 {
			b, _ := json.Marshal(r.GetErrors()) // map[string]string cannot fail
			row[p.errs] = parquet.ByteArrayValue(b).Level(0, 1, p.errs)
		}
		for i, n := range p.names {
			c := p.features[i]
			if v, ok := r.GetValues()[n]; ok {
				row[c] = parquet.DoubleValue(v).Level(0, 1, c)
			} else {
				row[c] = parquet.NullValue().Level(0, 0, c)
			}
		}
		p.batch = append(p.batch, row)
	}
	_, err := p.w.WriteRows(p.batch)
	return err
}

func (p *parquetRows) close() error { return p.w.Close() }
