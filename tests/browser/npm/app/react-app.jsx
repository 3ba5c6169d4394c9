// The test page for the packed client: useJobStatus and <JobStatus> under React's StrictMode,
// driven by the test through window.app (see tests/browser/test_client_package.py).
import {StrictMode, useEffect, useState} from "react";
import {createRoot} from "react-dom/client";
import {JobStatus, useJobStatus} from "@job-gateway/client/react";

const renders = [];     // every render of the probe: {jobId, shownId, phase, version}
const versions = {};    // job id → versions the hook showed, in order
let tokenCalls = 0;

async function getToken() {  // the integrator's backend mints a fresh token (a route the test answers)
  tokenCalls += 1;
  const res = await fetch(`/__token__?job=${encodeURIComponent(window.app.props.jobId)}`);
  return res.json();    // {token, expires_at}
}

function Probe({jobId, token, initial, renew}) {
  const s = useJobStatus(jobId, {token, initial, getToken: renew ? getToken : undefined});
  renders.push({jobId, shownId: s.job ? s.job.id : null, phase: s.phase, version: s.job ? s.job.version : null});
  useEffect(() => {
    if (!s.job) return;
    const list = (versions[s.job.id] ||= []);
    if (list[list.length - 1] !== s.job.version) list.push(s.job.version);
  }, [s.job]);
  return (
    <div id="probe" data-phase={s.phase} data-transport={s.transport} data-version={s.job ? s.job.version : ""}
         data-job={s.job ? s.job.id : ""} data-error={s.error ? s.error.code : ""}>{s.text}</div>
  );
}

function App() {
  const [props, setProps] = useState({jobId: null, token: "", initial: null, renew: false});
  const [mounted, setMounted] = useState(true);
  window.app = {
    props, renders, versions,
    get tokenCalls() { return tokenCalls; },
    watch: (jobId, token, initial = null, renew = false) => setProps({jobId, token, initial, renew}),
    unmount: () => setMounted(false),
  };
  if (!mounted) return <p id="gone">unmounted</p>;
  return (
    <>
      <Probe {...props} />
      <JobStatus jobId={props.jobId} token={props.token} initial={props.initial}
                 getToken={props.renew ? getToken : undefined} supportEmail="help@gateway.test" />
    </>
  );
}

createRoot(document.getElementById("root")).render(<StrictMode><App /></StrictMode>);
