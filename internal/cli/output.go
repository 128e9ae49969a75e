package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/errdefs"
)

// printError writes err the way every command reports failures:
//
//	error: <message> (<code>)
//	hint: <suggested action>
func printError(w io.Writer, err error) {
	var ae *client.APIError
	if errors.As(err, &ae) {
		if ae.Code != "" {
			fmt.Fprintf(w, "error: %s (%s)\n", ae.Message, ae.Code)
		} else {
			fmt.Fprintf(w, "error: %s\n", ae.Message)
		}
		if ae.SuggestedAction != "" {
			fmt.Fprintf(w, "hint: %s\n", ae.SuggestedAction)
		}
		return
	}
	fmt.Fprintf(w, "error: %v\n", err)
	// Server-side commands (serve, store) fail with the domain's errors,
	// whose suggested action is the hint.
	var de *errdefs.Error
	if errors.As(err, &de) && de.SuggestedAction != "" {
		fmt.Fprintf(w, "hint: %s\n", de.SuggestedAction)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		fmt.Fprintf(w, "hint: is the nullspace server running? Start it with 'nullspace serve', or point --api-url ($%s) at it\n", client.EnvAPIURL)
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJSONLine writes v as one line of JSON (streams of events).
func printJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
}

// printFields prints "Key:  value" lines, skipping empty values.
func printFields(w io.Writer, fields [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range fields {
		if f[1] != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
		}
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatAge prints how long ago t was, in one unit: 45s, 12m, 5h, 3d.
func formatAge(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

func formatTime(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.RFC3339), formatAge(now, t))
}

// formatBytes prints n in binary units: 512B, 1.5KiB, 391.0MiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// formatPairs prints a map as sorted "k=v, k2=v2".
func formatPairs(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ", ")
}
