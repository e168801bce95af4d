// What the enroller tells the metrics: its counters and its enrolment observer. Its own module so admin/metrics.ts
// needs nothing of the enroller itself (which imports the forwarder, which imports the metrics).

export interface EnrollerCounters {
  enrolments: number;
  enrolmentFailures: number;
  unenrolments: number;
  ruleRepairs: number;
  /** Pods refused because the backend captures none of their address families (ADD or late enrolment). */
  captureRefusals: number;
}

/** Told of enrolment outcomes (metrics). */
export interface EnrollerObserver {
  enrolled(backend: string, seconds: number): void;
}
