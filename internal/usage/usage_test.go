package usage

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

var day0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func at(h, m, s int) time.Time {
	return day0.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second)
}

func run(machine, lineage string, start, end time.Time, vcpus, memMB int) store.UsageRecord {
	return store.UsageRecord{Kind: store.UsageRun, TeamID: "t", MachineID: machine, LineageID: lineage,
		StartedAt: start, EndedAt: end, VCPUs: vcpus, MemoryMB: memMB}
}

func storage(machine string, start, end time.Time, bytes int64) store.UsageRecord {
	return store.UsageRecord{Kind: store.UsageStorage, TeamID: "t", MachineID: machine, LineageID: machine,
		StartedAt: start, EndedAt: end, Bytes: bytes}
}

func instant(kind, team, machine string, t time.Time, bytes int64) store.UsageRecord {
	return store.UsageRecord{Kind: kind, TeamID: team, MachineID: machine, LineageID: machine, StartedAt: t, EndedAt: t, Bytes: bytes}
}

func TestSummarize(t *testing.T) {
	now := at(30, 0, 0) // the next day, 06:00
	for _, tc := range []struct {
		name      string
		records   []store.UsageRecord
		from, to  time.Time
		by        GroupBy
		want      []Row
		backwards int
	}{{
		name: "run 10 s, pause 10 s, resume 5 s",
		records: []store.UsageRecord{
			run("m", "m", at(1, 0, 0), at(1, 0, 10), 2, 1024),
			storage("m", at(1, 0, 10), at(1, 0, 20), 1<<30),
			run("m2", "m", at(1, 0, 20), at(1, 0, 25), 2, 1024),
			instant(store.UsageCreate, "t", "m", at(1, 0, 0), 0),
			instant(store.UsageResume, "t", "m", at(1, 0, 20), 0),
		},
		from: day0, to: now, by: GroupBy{Machine: true},
		want: []Row{{MachineID: "m", RunningSeconds: 15, VCPUSeconds: 30, MemoryGiBSeconds: 15, StorageGiBSeconds: 10, Creates: 1, Resumes: 1}},
	}, {
		name:    "a span across midnight splits by day",
		records: []store.UsageRecord{run("m", "m", at(23, 59, 0), at(24, 1, 0), 1, 512)},
		from:    day0, to: now, by: GroupBy{Day: true},
		want: []Row{
			{Day: "2026-12-01", RunningSeconds: 60, VCPUSeconds: 60, MemoryGiBSeconds: 30},
			{Day: "2026-12-02", RunningSeconds: 60, VCPUSeconds: 60, MemoryGiBSeconds: 30},
		},
	}, {
		name:    "a span across midnight not split without day",
		records: []store.UsageRecord{run("m", "m", at(23, 59, 0), at(24, 1, 0), 1, 512)},
		from:    day0, to: now,
		want: []Row{{RunningSeconds: 120, VCPUSeconds: 120, MemoryGiBSeconds: 60}},
	}, {
		name:    "an open span runs until now, clipped to the range",
		records: []store.UsageRecord{run("m", "m", at(29, 0, 0), time.Time{}, 4, 2048), storage("s", at(29, 30, 0), time.Time{}, 2<<30)},
		from:    at(29, 10, 0), to: at(40, 0, 0), by: GroupBy{Team: true},
		want: []Row{{TeamID: "t", RunningSeconds: 3000, VCPUSeconds: 12000, MemoryGiBSeconds: 6000, StorageGiBSeconds: 3600}},
	}, {
		name: "spans and instants outside the range count nothing",
		records: []store.UsageRecord{
			run("m", "m", at(0, 0, 0), at(1, 0, 0), 1, 1024),
			instant(store.UsageCreate, "t", "m", at(0, 0, 0), 0),
			instant(store.UsageEgress, "t", "m", at(3, 0, 0), 100), // at to: outside
		},
		from: at(2, 0, 0), to: at(3, 0, 0),
		want: nil,
	}, {
		name:    "a span that starts before the range counts from its start",
		records: []store.UsageRecord{run("m", "m", at(0, 0, 0), at(2, 0, 30), 1, 1024), instant(store.UsageEgress, "t", "m", at(2, 0, 0), 100)},
		from:    at(2, 0, 0), to: at(3, 0, 0),
		want: []Row{{RunningSeconds: 30, VCPUSeconds: 30, MemoryGiBSeconds: 30, EgressBytes: 100}},
	}, {
		name: "a clock step backwards: the span ending before it starts counts zero and is reported",
		records: []store.UsageRecord{
			run("m", "m", at(5, 0, 10), at(5, 0, 0), 8, 8192),  // ended 10 s "before" it began
			run("m2", "m", at(5, 0, 0), at(5, 0, 4), 1, 1024),  // a later one, normal
			run("m3", "m", at(31, 0, 0), time.Time{}, 1, 1024), // open, begun after now
			storage("s", at(5, 0, 0), at(4, 59, 59), 1<<30),    // storage likewise
		},
		from: day0, to: at(48, 0, 0),
		want:      []Row{{RunningSeconds: 4, VCPUSeconds: 4, MemoryGiBSeconds: 4}},
		backwards: 3,
	}, {
		name: "grouped by team and machine, a resume is its lineage's machine",
		records: []store.UsageRecord{
			run("a", "a", at(1, 0, 0), at(1, 0, 1), 1, 1024),
			run("a2", "a", at(1, 0, 2), at(1, 0, 3), 1, 1024),
			run("b", "b", at(1, 0, 0), at(1, 0, 2), 1, 1024),
			instant(store.UsageCreate, "u", "c", at(1, 0, 0), 0),
		},
		from: day0, to: now, by: GroupBy{Team: true, Machine: true},
		want: []Row{
			{TeamID: "t", MachineID: "a", RunningSeconds: 2, VCPUSeconds: 2, MemoryGiBSeconds: 2},
			{TeamID: "t", MachineID: "b", RunningSeconds: 2, VCPUSeconds: 2, MemoryGiBSeconds: 2},
			{TeamID: "u", MachineID: "c", Creates: 1},
		},
	}, {
		name:    "sub-second spans are exact",
		records: []store.UsageRecord{run("m", "m", at(1, 0, 0), at(1, 0, 0).Add(1500*time.Millisecond), 3, 1536)},
		from:    day0, to: now,
		want: []Row{{RunningSeconds: 1.5, VCPUSeconds: 4.5, MemoryGiBSeconds: 2.25}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			rep := Summarize(tc.records, tc.from, tc.to, now, tc.by)
			if !reflect.DeepEqual(rep.Rows, tc.want) {
				t.Errorf("got rows\n%+v\nwant\n%+v", rep.Rows, tc.want)
			}
			if len(rep.Backwards) != tc.backwards {
				t.Errorf("got %d backwards spans %+v, want %d", len(rep.Backwards), rep.Backwards, tc.backwards)
			}
		})
	}
}

func TestParseGroupBy(t *testing.T) {
	for in, want := range map[string]GroupBy{
		"": {}, "team": {Team: true}, "machine,day": {Machine: true, Day: true}, "day, team ,machine": {true, true, true},
	} {
		if got, ok := ParseGroupBy(in); !ok || got != want {
			t.Errorf("ParseGroupBy(%q) = %+v, %v; want %+v", in, got, ok, want)
		}
	}
	if _, ok := ParseGroupBy("week"); ok {
		t.Errorf("ParseGroupBy(week): ok, want refused")
	}
}

func TestWriteCSV(t *testing.T) {
	var b strings.Builder
	err := WriteCSV(&b, []Row{{TeamID: "t", MachineID: "m,1", Day: "2026-12-01", RunningSeconds: 1.5, VCPUSeconds: 3,
		MemoryGiBSeconds: 0.75, StorageGiBSeconds: 0.000001, Creates: 1, Resumes: 2, EgressBytes: 300}})
	if err != nil {
		t.Fatal(err)
	}
	want := "team_id,machine_id,day,running_seconds,vcpu_seconds,memory_gib_seconds,storage_gib_seconds,creates,resumes,egress_bytes\n" +
		"t,\"m,1\",2026-12-01,1.5,3,0.75,0.000001,1,2,300\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
