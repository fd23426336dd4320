package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/apiquota/limiter/internal/throttleserver"
)

// result is what one client achieved, as the server saw it. With -json it
// is printed as one object per line.
type result struct {
	Client    string `json:"client"`    // "none", "x/time/rate" or "limiter"
	Calls     int    `json:"calls"`     // calls made (each may take several requests)
	Failed    int    `json:"failed"`    // calls that did not end in 200
	Requests  int    `json:"requests"`  // requests the server received, retries included
	Status429 int    `json:"status429"` // 429 responses the server sent
	Refused   int    `json:"refused"`   // refusals the server sent: 429, or 403 (github)
	// RefusedLater counts the refusals after the first window: what the
	// Transport did not learn from the first ones.
	RefusedLater int `json:"refused_later"`

	WallSeconds  float64 `json:"wall_seconds"`  // from the common start to the client's last response
	IdealSeconds float64 `json:"ideal_seconds"` // the fastest the server allows, see idealWall

	// BusiestWindow is the most calls the server counted (accepted) in any
	// sliding window; it cannot exceed Limit, and a client that uses its
	// quota well reaches it. BusiestWindowRequests counts every request,
	// refused ones too: how hard the client pushed.
	BusiestWindow         int     `json:"busiest_window"`
	BusiestWindowRequests int     `json:"busiest_window_requests"`
	Limit                 int     `json:"limit"`
	WindowSeconds         float64 `json:"window_seconds"`

	// PerSecond and PerSecond429 count the accepted and the refused
	// requests in each second from the common start.
	PerSecond    []int `json:"per_second"`
	PerSecond429 []int `json:"per_second_429"`
}

func newResult(c *client, st throttleserver.Stats, start time.Time, ideal time.Duration) result {
	ok, refused := st.Histogram(start, time.Second)
	n429, later := 0, 0
	for _, a := range st.Arrivals {
		if a.Status == http.StatusTooManyRequests {
			n429++
		}
		if a.Status != http.StatusOK && a.At.Sub(start) >= st.Window {
			later++
		}
	}
	return result{
		Client:                c.name,
		Calls:                 int(c.done.Load()),
		Failed:                int(c.failed.Load()),
		Requests:              len(st.Arrivals),
		Status429:             n429,
		Refused:               st.Throttled,
		RefusedLater:          later,
		WallSeconds:           seconds(c.end.Sub(start)),
		IdealSeconds:          seconds(ideal),
		BusiestWindow:         st.BusiestWindow(),
		BusiestWindowRequests: st.BusiestWindowAll(),
		Limit:                 st.Limit,
		WindowSeconds:         seconds(st.Window),
		PerSecond:             ok,
		PerSecond429:          refused,
	}
}

// seconds rounds d to milliseconds, enough for a report.
func seconds(d time.Duration) float64 {
	return math.Round(d.Seconds()*1000) / 1000
}

func printJSON(w io.Writer, results []result) error {
	enc := json.NewEncoder(w)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func printTable(w io.Writer, opt options, results []result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\neach client: %d calls, %d workers; server latency %v\n\n",
		servers[opt.server].describe(opt), opt.calls, opt.workers, &opt.latency)

	fmt.Fprintf(&b, "%-12s %6s %8s %7s %7s %10s %9s   %s\n",
		"client", "calls", "refused", "later", "failed", "wall time", "vs ideal", fmt.Sprintf("busiest %v window", opt.window))
	for _, r := range results {
		fmt.Fprintf(&b, "%-12s %6d %8d %7d %7d %9.2fs %+8.1f%%   %d/%d (%d requests)\n",
			r.Client, r.Calls, r.Refused, r.RefusedLater, r.Failed, r.WallSeconds,
			100*(r.WallSeconds/r.IdealSeconds-1), r.BusiestWindow, r.Limit, r.BusiestWindowRequests)
	}
	// No client can beat this: see idealWall.
	fmt.Fprintf(&b, "%-12s %6d %8d %7d %7d %9.2fs %9s   the fastest the server allows\n",
		"ideal", opt.calls, 0, 0, 0, results[0].IdealSeconds, "")
	fmt.Fprintf(&b, "(refused: 429s, or GitHub's 403s; later: after the first %v window)\n", opt.window)

	writeChart(&b, results)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeChart draws, for each client, the accepted requests and the refusals per
// second (or per few seconds, to keep a long run within 60 columns) as
// sparklines on one scale.
func writeChart(b *strings.Builder, results []result) {
	const maxColumns = 60
	secs := 0
	for _, r := range results {
		secs = max(secs, len(r.PerSecond), len(r.PerSecond429))
	}
	step := max(1, ceilDiv(secs, maxColumns)) // seconds per column

	type row struct{ ok, refused []int }
	rows := make([]row, len(results))
	top := 1
	for i, r := range results {
		rows[i] = row{regroup(r.PerSecond, step), regroup(r.PerSecond429, step)}
		for _, v := range rows[i].ok {
			top = max(top, v)
		}
		for _, v := range rows[i].refused {
			top = max(top, v)
		}
	}

	unit := "second"
	if step > 1 {
		unit = fmt.Sprintf("%d seconds", step)
	}
	fmt.Fprintf(b, "\nrequests per %s (█ = %d), accepted and refused:\n", unit, top)
	fmt.Fprintf(b, "%-12s %-4s %s\n", "", "", axis(ceilDiv(secs, step), step))
	for i, r := range results {
		fmt.Fprintf(b, "%-12s %-4s|%s|\n", r.Client, "200", sparkline(rows[i].ok, top))
		fmt.Fprintf(b, "%-12s %-4s|%s|\n", "", "no", sparkline(rows[i].refused, top))
	}
}

// regroup sums each step consecutive values.
func regroup(values []int, step int) []int {
	out := make([]int, ceilDiv(len(values), step))
	for i, v := range values {
		out[i/step] += v
	}
	return out
}

// sparkline draws one block per value, from ▁ (a little) to █ (top); a
// space is zero.
func sparkline(values []int, top int) string {
	blocks := []rune("▁▂▃▄▅▆▇█")
	var b strings.Builder
	for _, v := range values {
		if v == 0 {
			b.WriteByte(' ')
			continue
		}
		level := min(max(ceilDiv(v*len(blocks), top), 1), len(blocks))
		b.WriteRune(blocks[level-1])
	}
	return b.String()
}

// axis labels every tenth column with its time: " 0s        10s ...".
func axis(columns, step int) string {
	line := []byte(strings.Repeat(" ", columns+8))
	for col := 0; col < columns; col += 10 {
		label := fmt.Sprintf("%ds", col*step)
		copy(line[col+1:], label) // +1 for the sparkline's opening bar
	}
	return strings.TrimRight(string(line), " ")
}
