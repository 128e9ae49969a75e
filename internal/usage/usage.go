// Package usage turns the usage ledger (store.UsageRecord: runs, storage
// spans, creates, resumes, egress) into what a team is billed for over a
// range of time: running time in vCPU-seconds and GiB-seconds of memory,
// stored snapshots in GiB-seconds, counts of creates and resumes, and
// bytes sent, grouped by team, machine and UTC day, as rows or CSV.
//
// Everything here is arithmetic on recorded transitions, never on
// samples: a span is integrated exactly over its overlap with [from, to).
package usage

import (
	"cmp"
	"encoding/csv"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

// GroupBy says which keys a row is per; none gives one row of totals.
type GroupBy struct {
	Team, Machine, Day bool
}

// ParseGroupBy reads a comma-separated list of team, machine and day.
func ParseGroupBy(s string) (GroupBy, bool) {
	var g GroupBy
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "":
		case "team":
			g.Team = true
		case "machine":
			g.Machine = true
		case "day":
			g.Day = true
		default:
			return GroupBy{}, false
		}
	}
	return g, true
}

// Row is the usage of one group. Keys not grouped by are empty. Machine is
// the machine's id as users know it: its lineage's (a resume makes a new
// execution id; the first stays the machine's name).
type Row struct {
	TeamID    string
	MachineID string
	Day       string // YYYY-MM-DD, UTC
	// RunningSeconds is the time machines ran (sum over machines).
	RunningSeconds    float64
	VCPUSeconds       float64
	MemoryGiBSeconds  float64
	StorageGiBSeconds float64
	Creates, Resumes  int64
	EgressBytes       int64
}

// Report is the usage over a range, and the spans that counted nothing
// because they end before they start (the clock stepped back between
// their two ends): the caller logs them.
type Report struct {
	Rows      []Row
	Backwards []store.UsageRecord
}

const (
	mib = 1 << 20
	gib = 1 << 30
)

type key struct{ team, machine, day string }

// Summarize integrates records over [from, to): a span counts for the part
// of it inside the range (an open one, EndedAt zero, until now), split at
// UTC midnights when grouped by day; an instant (create, resume, egress)
// counts if it is inside the range. A span that ends before it starts
// counts zero and is reported, never negative.
func Summarize(records []store.UsageRecord, from, to, now time.Time, by GroupBy) Report {
	rows := map[key]*Row{}
	var rep Report
	row := func(r store.UsageRecord, day time.Time) *Row {
		var k key
		if by.Team {
			k.team = r.TeamID
		}
		if by.Machine {
			k.machine = cmp.Or(r.LineageID, r.MachineID)
		}
		if by.Day {
			k.day = day.UTC().Format(time.DateOnly)
		}
		if rows[k] == nil {
			rows[k] = &Row{TeamID: k.team, MachineID: k.machine, Day: k.day}
		}
		return rows[k]
	}
	for _, r := range records {
		switch r.Kind {
		case store.UsageCreate, store.UsageResume, store.UsageEgress:
			if r.StartedAt.Before(from) || !r.StartedAt.Before(to) {
				continue
			}
			g := row(r, r.StartedAt)
			switch r.Kind {
			case store.UsageCreate:
				g.Creates++
			case store.UsageResume:
				g.Resumes++
			default:
				g.EgressBytes += r.Bytes
			}
		case store.UsageRun, store.UsageStorage:
			end := r.EndedAt
			if end.IsZero() {
				end = now
			}
			if end.Before(r.StartedAt) {
				rep.Backwards = append(rep.Backwards, r)
				continue
			}
			for _, p := range split(maxTime(r.StartedAt, from), minTime(end, to), by.Day) {
				g := row(r, p.start)
				secs := p.end.Sub(p.start).Seconds()
				if r.Kind == store.UsageRun {
					g.RunningSeconds += secs
					g.VCPUSeconds += secs * float64(r.VCPUs)
					g.MemoryGiBSeconds += secs * float64(r.MemoryMB) * mib / gib
				} else {
					g.StorageGiBSeconds += secs * float64(r.Bytes) / gib
				}
			}
		}
	}
	for _, g := range rows {
		g.RunningSeconds = round(g.RunningSeconds)
		g.VCPUSeconds = round(g.VCPUSeconds)
		g.MemoryGiBSeconds = round(g.MemoryGiBSeconds)
		g.StorageGiBSeconds = round(g.StorageGiBSeconds)
		rep.Rows = append(rep.Rows, *g)
	}
	slices.SortFunc(rep.Rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.TeamID, b.TeamID), cmp.Compare(a.MachineID, b.MachineID), cmp.Compare(a.Day, b.Day))
	})
	return rep
}

type piece struct{ start, end time.Time }

// split cuts [start, end) at UTC midnights if byDay; empty if end is not
// after start.
func split(start, end time.Time, byDay bool) []piece {
	if !end.After(start) {
		return nil
	}
	if !byDay {
		return []piece{{start, end}}
	}
	var out []piece
	for start.Before(end) {
		s := start.UTC()
		next := time.Date(s.Year(), s.Month(), s.Day()+1, 0, 0, 0, 0, time.UTC)
		out = append(out, piece{start, minTime(next, end)})
		start = next
	}
	return out
}

// round keeps microseconds' worth of precision (the store's).
func round(x float64) float64 { return math.Round(x*1e6) / 1e6 }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// CSVHeader are the columns WriteCSV writes, in order.
var CSVHeader = []string{"team_id", "machine_id", "day", "running_seconds", "vcpu_seconds", "memory_gib_seconds",
	"storage_gib_seconds", "creates", "resumes", "egress_bytes"}

// WriteCSV writes rows as CSV with a header line (keys not grouped by are
// empty).
func WriteCSV(w io.Writer, rows []Row) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	for _, r := range rows {
		if err := cw.Write([]string{r.TeamID, r.MachineID, r.Day, f(r.RunningSeconds), f(r.VCPUSeconds), f(r.MemoryGiBSeconds),
			f(r.StorageGiBSeconds), strconv.FormatInt(r.Creates, 10), strconv.FormatInt(r.Resumes, 10), strconv.FormatInt(r.EgressBytes, 10)}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
