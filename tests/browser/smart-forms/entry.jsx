// CSIRO Smart Forms for the headless-Chromium DTR test (tests/test_dtr_smart_forms.py), bundled by esbuild
// (`npm run build`). Exposes window.renderSmartForm(questionnaire, questionnaireResponse) and
// window.smartFormResponse() -> the QuestionnaireResponse the renderer holds.
import React from 'react';
import { createRoot } from 'react-dom/client';
import { SmartFormsRenderer, getResponse } from '@aehrc/smart-forms-renderer';

let root = null;

window.renderSmartForm = (questionnaire, questionnaireResponse) => {
  const container = document.getElementById('form-container');
  if (root) root.unmount();
  root = createRoot(container);
  // No terminology server: an unreachable loopback port, so a form that is not self-contained fails visibly.
  root.render(
    <SmartFormsRenderer
      questionnaire={questionnaire}
      questionnaireResponse={questionnaireResponse || undefined}
      terminologyServerUrl="http://127.0.0.1:9/fhir"
    />
  );
};

window.smartFormResponse = () => getResponse();
window.smartFormsLoaded = true;
