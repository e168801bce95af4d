// Entry point of the standalone plugin executable (Node single executable application, dist/bin/ambient-cni-standalone):
// the same process shell as main.ts, bundled as CommonJS into the executable so hosts without Node can run the plugin.
import { runAsProcess } from './main.js';

void runAsProcess();
