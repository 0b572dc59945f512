// Validates an OpenAPI document with swagger-parser: node validate.mjs openapi/openapi.json
import SwaggerParser from "@apidevtools/swagger-parser";

const path = process.argv[2];
try {
  const api = await SwaggerParser.validate(path);
  console.log(`valid: ${api.info.title} ${api.info.version} (OpenAPI ${api.openapi})`);
} catch (e) {
  console.error(`invalid: ${e.message}`);
  process.exit(1);
}
