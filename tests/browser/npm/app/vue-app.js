// The test page for the packed client's Vue composable, driven by the test through window.app.
import {createApp, defineComponent, h, ref} from "vue";
import {useJobStatus} from "@job-gateway/client/vue";

const jobId = ref(null);
const token = ref("");

const Status = defineComponent({
  setup() {
    const s = useJobStatus(jobId, {token});
    return () => h("div", {
      id: "probe", "data-phase": s.phase.value, "data-transport": s.transport.value,
      "data-job": s.job.value ? s.job.value.id : "", "data-version": s.job.value ? s.job.value.version : "",
    }, s.text.value);
  },
});

const shown = ref(true);
const app = createApp({render: () => (shown.value ? h(Status) : h("p", {id: "gone"}, "unmounted"))});
app.mount("#root");
window.app = {
  watch: (id, tok) => { token.value = tok; jobId.value = id; },
  unmount: () => { shown.value = false; },
};
