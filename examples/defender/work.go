package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// request builds call i of a session: one in five is an advanced hunting
// query, one in twenty-five a $batch of 20 machine lookups, the rest are
// single machine lookups. It returns the request and what the API charges
// for it.
func request(ctx context.Context, base string, i int) (*http.Request, int, error) {
	var method, path, body string
	cost := 1
	switch {
	case i%25 == 24:
		method, path, cost = http.MethodPost, "/api/$batch", 20
		inner := make([]string, cost)
		for j := range inner {
			inner[j] = fmt.Sprintf(`{"id":"%d","method":"GET","url":"/api/machines/m%d"}`, j+1, j)
		}
		body = `{"requests":[` + strings.Join(inner, ",") + `]}`
	case i%5 == 0:
		method, path = http.MethodPost, "/api/advancedqueries/run"
		body = `{"Query":"DeviceProcessEvents | where Timestamp > ago(1h) | take 10"}`
	default:
		method, path = http.MethodGet, fmt.Sprintf("/api/machines/m%d", i)
	}
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, r)
	if err == nil && body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, cost, err
}

// work makes calls calls with workers goroutines and returns how many it
// made, what they were charged and how many did not end in 200.
func work(ctx context.Context, client *http.Client, base string, calls, workers int) (made, cost, failed int) {
	var next, charged, bad atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(calls); i = next.Add(1) {
				req, c, err := request(ctx, base, int(i-1))
				charged.Add(int64(c))
				if err != nil {
					bad.Add(1)
					continue
				}
				resp, err := client.Do(req)
				if err != nil {
					bad.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return calls, int(charged.Load()), int(bad.Load())
}
