package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

func newReportCmd(stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	var conn connFlags
	cmd := &cobra.Command{
		Use:   "report [CAMPAIGN]",
		Short: "Measure campaigns, treated vs control (role admin or console)",
		Long: `Measures the campaigns (AdminService, role admin or console): for each trigger,
journey step and offer of the rules in force, or the one named, its
treated and control users exposed and converted, conversion rate and
value, the uplift in percentage points, the lift with its 95% confidence
interval and the p-value ("-" where the counts do not define them;
docs/rules.md, "Measuring campaigns").`,
		Example: "  nudgectl report\n  nudgectl report cart-reminder --json",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("takes at most one CAMPAIGN, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			return exitWith(report(conn, args, asJSON, stdout, stderr))
		},
	}
	conn = addConnFlags(cmd.Flags(), true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

// report: nudgectl report [CAMPAIGN] (AdminService, role admin or console). Without
// a campaign it lists every campaign of the rules in force.
func report(conn connFlags, pos []string, asJSON bool, stdout, stderr io.Writer) int {
	const cmd = "nudgectl report"
	cl, err := conn.dial()
	if err != nil {
		return dialFailed(stderr, cmd, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *conn.timeout)
	defer cancel()
	admin := nudgev1.NewAdminServiceClient(cl.Conn())
	if len(pos) == 1 {
		resp, err := admin.GetCampaignReport(ctx, &nudgev1.GetCampaignReportRequest{CampaignId: pos[0]})
		if err != nil {
			msg := conn.Describe(err)
			if status.Code(err) == codes.NotFound {
				msg += " (nudgectl report without a campaign lists them)"
			}
			fmt.Fprintf(stderr, "%s: %s\n", cmd, msg)
			return 1
		}
		if asJSON {
			printProto(stdout, resp, true)
		} else {
			printCampaignReports(stdout, []*nudgev1.GetCampaignReportResponse{resp})
		}
		return 0
	}
	resp, err := admin.ListCampaignReports(ctx, &nudgev1.ListCampaignReportsRequest{})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", cmd, conn.Describe(err))
		return 1
	}
	if asJSON {
		printProto(stdout, resp, true)
		return 0
	}
	if len(resp.GetReports()) == 0 {
		fmt.Fprintln(stdout, "no campaigns in the rules in force")
		return 0
	}
	printCampaignReports(stdout, resp.GetReports())
	return 0
}

// printCampaignReports prints the reports as a table for people: two rows
// a campaign, treated then control, with the comparison on the first.
func printCampaignReports(w io.Writer, reports []*nudgev1.GetCampaignReportResponse) {
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CAMPAIGN\tKIND\tVARIANT\tEXPOSED\tCONVERTED\tRATE\tVALUE\tUPLIFT\tLIFT (95% CI)\tP-VALUE")
	for _, r := range reports {
		kind := r.GetKind()
		switch {
		case kind == "":
			kind = "not in rules"
		case r.GetThompson():
			kind += " (thompson)"
		}
		control := "control"
		if s := r.GetControlShare(); s > 0 {
			control += fmt.Sprintf(" %.4g%%", 100*s) // 10%, 2.5%
		}
		t, c := r.GetTreated(), r.GetControl()
		fmt.Fprintf(tw, "%s\t%s\ttreated\t%d\t%d\t%s\t%.2f\t%s\t%s\t%s\n",
			r.GetCampaignId(), kind, t.GetExposedUsers(), t.GetConvertedUsers(), percent(t.GetConversionRate(), 2), t.GetConversionValue(),
			uplift(r), lift(r), pValue(r))
		fmt.Fprintf(tw, "\t\t%s\t%d\t%d\t%s\t%.2f\t\t\t\n",
			control, c.GetExposedUsers(), c.GetConvertedUsers(), percent(c.GetConversionRate(), 2), c.GetConversionValue())
	}
	_ = tw.Flush()
	// The control rows keep the comparison's cells, empty, so that the
	// columns stay aligned over every row: their padding is trimmed.
	for line := range strings.Lines(table.String()) {
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
}

// percent formats a ratio as a percentage with the given decimals.
func percent(ratio float64, decimals int) string {
	return fmt.Sprintf("%.*f%%", decimals, 100*ratio)
}

// uplift is the difference of the rates in percentage points; "-" when
// the counts do not define it.
func uplift(r *nudgev1.GetCampaignReportResponse) string {
	if r.Uplift == nil {
		return "-"
	}
	return fmt.Sprintf("%+.2f pp", 100*r.GetUplift())
}

// lift is the relative lift with its 95% confidence interval.
func lift(r *nudgev1.GetCampaignReportResponse) string {
	if r.Lift == nil {
		return "-"
	}
	s := signedPercent(r.GetLift())
	if r.LiftCiLow != nil && r.LiftCiHigh != nil {
		s += fmt.Sprintf(" [%s, %s]", signedPercent(r.GetLiftCiLow()), signedPercent(r.GetLiftCiHigh()))
	}
	return s
}

func signedPercent(ratio float64) string {
	return fmt.Sprintf("%+.1f%%", 100*ratio)
}

// pValue prints small p-values as a bound, as reports usually do.
func pValue(r *nudgev1.GetCampaignReportResponse) string {
	switch {
	case r.PValue == nil:
		return "-"
	case r.GetPValue() < 0.001:
		return "<0.001"
	}
	return fmt.Sprintf("%.3f", r.GetPValue())
}
